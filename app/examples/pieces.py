"""Pieces the schema and route examples share."""

from typing import Any

# The group statistics of a certified set with no points (the demo's pool certified none).
EMPTY_CERTIFIED_SET: dict[str, Any] = {'auc': None,
 'auc_hi': None,
 'auc_lo': None,
 'n': 0,
 'tpr': None,
 'tpr_hi': None,
 'tpr_lo': None}

# The unlearning parameters of the demo's policy, as a model, a request and a job carry them.
POLICY_PARAMS: dict[str, Any] = {'epochs': 3, 'lr': 0.01, 'momentum': 0.9, 'batch_size': 64, 'weight_decay': 0.0}

# A version as GET /models/{name}/versions/{n} shows it, and in its model's list of versions.
VERSION_READ: dict[str, Any] = {'version': 1,
 'ref': 'digits@1',
 'sha256': 'c4a648e017de8980510e02b8f00ace687a66ea159baa394076f89cc0de796e05',
 'source': 'train',
 'status': 'active',
 'parent': None,
 'request_id': None,
 'job_id': '8a771a6a-6604-4031-bb65-c42b24acefd5',
 'threshold': 0.0022,
 'budget': 28,
 'n_train': 1438,
 'metrics': {'epochs': 30,
             'final_loss': 0.0455,
             'train_accuracy': 0.9903,
             'seconds': 66.4527,
             'n_train': 1438,
             'checkpoints': 3,
             'test_accuracy': 0.9721},
 'created_at': '2026-12-07T21:34:05.133185Z',
 'revoked_at': None,
 'influence': [{'method': 'gradnorm',
                'status': 'completed',
                'threshold': 0.0022,
                'n': 1438,
                'job_id': '4fbfa080-193a-457c-af74-e256a1de53cf',
                'computed_by': {'source': 'final-weights',
                                'norm_policy': {'applied': 'eval: BatchNorm normalises with its running '
                                                           'statistics, dropout off',
                                                'batchnorm_layers': 0,
                                                'dropout_layers': 0}}}],
 'audit': None}

# What a request's free answers rest on: the pool, its limits, the certified set.
EVIDENCE: dict[str, Any] = {'free_basis': 'measured',
 'pool_id': '0d9d5aae-8591-4132-80df-017239bfacfb',
 'k': 16,
 'measured_at': '2026-12-07T21:36:00.571312Z',
 'limits': {'auc_max': 0.55, 'tpr_max': 0.02, 'fpr': 0.01, 'confidence': 0.95},
 'certified_set': EMPTY_CERTIFIED_SET,
 'n_certified': 0,
 'removed_fraction': 0.0}

# The retrained range of an audit: where a model retrained without the points scores.
AUDIT_NULL: dict[str, Any] = {'center': 0.0227, 'hi': 3.0231, 'lo': -2.9776, 'models': 13}

# How concentrated a request is (share of the data, of a class, depletion of its neighbours).
CONCENTRATION: dict[str, Any] = {'class_share': 0.02,
 'concentrated': False,
 'data_share': 0.0056,
 'depletion': 0.0113,
 'why': None}

# A signed checkpoint of the ledger's head.
CHECKPOINT: dict[str, Any] = {'tenant_id': '8dffa258-1ca4-42c5-9dfe-4851a5b337bc',
 'seq': 34,
 'head': '9a13e51375a92b02b6dcf28f150bb10d06b485fc369013658887031f4d76176d',
 'signed_at': '2026-12-07T21:36:50.280910Z',
 'alg': 'Ed25519',
 'key_id': '27cb1fee7d4f986f',
 'signature': 'bFRR0CMxJixTox50damKFe/T…'}

# The first point of the demo's removal curves: every scorer's lowest 14 points agree.
CURVE_START: dict[str, Any] = {'n': 14,
 'acc_full': 1.0,
 'acc_retrained': 1.0,
 'loss_auc': 0.7015,
 'loss_full': 0.0,
 'loss_retrained': 0.0}
