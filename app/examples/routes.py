"""Examples of the answers that have no named schema of their own, by route name."""

from typing import Any

from app.examples.pieces import AUDIT_NULL, CHECKPOINT, CONCENTRATION, CURVE_START, EVIDENCE

ROUTES: dict[str, Any] = {'healthz': {'status': 'ok'},
 'readyz': {'status': 'ok', 'checks': {'database': 'ok', 'broker': 'ok'}},
 'kinds': {'kinds': ['cnn', 'linear', 'mlp']},
 'certificate': {'audits': [{'accuracy': {'passed': True, 'reasons': []},
                             'algorithm': 'finetune',
                             'attempt': 1,
                             'evidence': {'accepted': False,
                                          'alpha': 0.01,
                                          'alternative': {'mean': 0.8537, 'models': 13, 'sd': 0.6406},
                                          'basis': 'measured',
                                          'concentrated': False,
                                          'concentration': CONCENTRATION,
                                          'k': 16,
                                          'largest_class_share': 0.02,
                                          'min_power': 0.8,
                                          'n_points': 8,
                                          'n_request': 8,
                                          'n_unmeasured': 0,
                                          'null': AUDIT_NULL,
                                          'parent': {'outside_null': False, 'statistic': 0.3871},
                                          'pool_id': '0d9d5aae-8591-4132-80df-017239bfacfb',
                                          'power': 0.0004,
                                          'promoted_as_retrain': False,
                                          'side': None,
                                          'size_shift': {'effect': -0.1733, 'measured': True, 'se': 0.2431},
                                          'statistic': 0.0058,
                                          'verdict': 'inconclusive',
                                          'why': 'power 0.00 < 0.8: doing nothing could not be told apart'},
                             'informational': ['after.mia', 'after.mia_conf', 'before.mia'],
                             'job_id': 'f73bb263-77bc-49a1-923e-e5d7767cb218',
                             'passed': False,
                             'reasons': ['inconclusive: power 0.00 < 0.8: doing nothing could not be told apart'],
                             'verdict': 'inconclusive',
                             'version': None}],
                 'certificate': 'lethe.deletion/v1',
                 'checkpoint': CHECKPOINT,
                 'completed_at': '2026-12-07T21:36:50.162556Z',
                 'counts': {'unlearned': 8},
                 'created_at': '2026-12-07T21:36:34.168674Z',
                 'evidence': EVIDENCE,
                 'free_basis': 'measured',
                 'issued_at': '2026-12-07T21:37:09.392322Z',
                 'ledger': [{'at': '2026-12-07T21:36:34.176923Z',
                             'event': 'request.received',
                             'hash': '4b62c3e4bd2d0ecb48ad6719723ab6c287ee6fe8ce98f0b9294dc5b5c8cc6813',
                             'seq': 17,
                             'subject_id': 'db5a6599-232d-467f-8985-16b99010ef7b',
                             'subject_type': 'request'}],
                 'ledger_head': '9a13e51375a92b02b6dcf28f150bb10d06b485fc369013658887031f4d76176d',
                 'ledger_ok': True,
                 'linked_requests': [],
                 'metrics': {'after': {'basis': 'as for each metric',
                                       'meaning': 'metrics of the version the job produced',
                                       'name': 'new version'},
                             'before': {'basis': 'as for each metric',
                                        'meaning': 'metrics of the version the request was made against',
                                        'name': 'parent version'},
                             'fa': {'basis': "the request's points, their dataset labels",
                                    'meaning': "the model's accuracy on the request's points (1 − ua)",
                                    'name': 'forget accuracy'},
                             'forget_loss': {'basis': "the request's points",
                                             'meaning': "mean cross-entropy of the model on the request's points",
                                             'name': 'forget loss'},
                             'free_basis': {'basis': 'the reference pool valid when the request arrived',
                                            'meaning': 'measured (the point belongs to the pool-certified set), '
                                                       'provisional (an influence score rule, nothing measured) or '
                                                       'unmeasured (nothing was free)',
                                            'name': 'basis of free answers'},
                             'gap': {'basis': 'a retrain reference trained in the job (policy.audit.retrain_reference)',
                                     'meaning': '|new version − a model retrained without the points| per metric; '
                                                'avg_gap is their mean',
                                     'name': 'gap to a retrain'},
                             'mia': {'basis': "the request's points against an equal sample of the test split; "
                                              "'insufficient' under LETHE_AUDIT_MIN_POINTS points. Informational: "
                                              'the two sets differ in class and difficulty',
                                     'meaning': 'cross-validated AUC of a logistic regression telling the '
                                                "request's points from test points by their loss (0.5: chance), "
                                                'with a permutation p-value',
                                     'name': 'loss membership-inference attack (informational)'},
                             'mia_conf': {'basis': 'retain and test samples of equal size (at most 1,000), then '
                                                   "the request's points",
                                          'meaning': "share of the request's points an RBF SVM, trained to tell "
                                                     "retain (member) from test (non-member) points by the model's "
                                                     'confidence, calls non-member (higher: more forgotten); '
                                                     'by_entropy repeats it on prediction entropy',
                                          'name': 'confidence membership-inference efficacy (informational)'},
                             'null': {'basis': "each pool model's own statistic over the request points it left out",
                                      'meaning': 'two-sided prediction interval (1 − alpha) of the statistic for '
                                                 'models that never saw the points; lo/hi bound it, center is its '
                                                 'middle',
                                      'name': 'retrained range'},
                             'power': {'basis': "the pool models that were trained with the request's points",
                                       'meaning': 'probability that the audit notices a model that did not unlearn '
                                                  '(its statistic outside the retrained range); at least min_power '
                                                  'needed',
                                       'name': 'power'},
                             'ra': {'basis': 'a seeded sample of at most 2,000 training points outside the request',
                                    'meaning': "the model's accuracy on data it is meant to keep",
                                    'name': 'retain accuracy'},
                             'separation': {'basis': "the reference pool's held-out halves",
                                            'meaning': "the point's own membership-inference (LiRA) AUC between "
                                                       'pool models trained with and without it (0.5: chance); '
                                                       'reported, never deciding alone',
                                            'name': 'separation'},
                             'statistic': {'basis': "the lineage's reference pool: K shadow models, each point "
                                                    'left out of half of them',
                                           'meaning': "separation-weighted mean of the new version's standardised "
                                                      "confidence margin φ on the request's points, 0 = where a "
                                                      'model retrained without them puts them, 1 = where the '
                                                      'unchanged model does',
                                           'name': 'audit statistic'},
                             'ta': {'basis': "the dataset's test split, never trained on",
                                    'meaning': "the model's accuracy on held-out data",
                                    'name': 'test accuracy'},
                             'ua': {'basis': "the request's points (free, pruned and unlearned ones), their "
                                             'dataset labels',
                                    'meaning': "1 − the model's accuracy on the request's points (higher: more "
                                               'forgotten)',
                                    'name': 'unlearning accuracy'},
                             'verdict': {'basis': 'statistic, null and power above, then retain and test accuracy '
                                                  'against the parent',
                                         'meaning': 'passed (inside the retrained range, with power), failed '
                                                    "(outside it: side 'remembers' or 'over-forgets', or accuracy "
                                                    'fell beyond policy) or inconclusive (no valid pool, too '
                                                    'little power, the unchanged parent would pass too, or a '
                                                    'concentrated request without a retrain reference)',
                                         'name': 'audit verdict'}},
                 'model': 'digits',
                 'original_outside_lethe': False,
                 'points': [{'disposition': 'unlearned', 'point_id': 'd0001', 'ref': 'digits@2', 'separation': 0.4219}],
                 'reason': 'GDPR art. 17 request #1234',
                 'request_id': 'db5a6599-232d-467f-8985-16b99010ef7b',
                 'requested_against': 'digits@1',
                 'requested_by_hash': '6d1e9728a461dfe1df3d4822dd7111ffed639310fdeaa0d7163cc9c45ddf9114',
                 'status': 'completed',
                 'subjects_without_data': [{'statement': 'no data held for this subject',
                                            'subject_hash': 'e3928155ed30093e350f5ad19a4bdcf11b32a0f6ef7adb3a5413b1f91f38b714'}],  # noqa: E501
                 'signature': {'alg': 'Ed25519',
                               'key_id': '27cb1fee7d4f986f',
                               'value': 'B7XL9Bws7jXbwNruiuYsFZaZ…',
                               'signed': 'canonical JSON of every other field (sorted keys, no spaces); public '
                                         'key: GET /ledger/public-key'}},
 'calibration': {'method': 'gradnorm',
                 'epsilon': 0.01,
                 'prune_epsilon': 0.03,
                 'auc_max': 0.55,
                 'grid': [14, 29, 43],
                 'n_free': 0,
                 'n_prune': 286,
                 'threshold': 0.0,
                 'prune_threshold': 0.0063,
                 'curves': {'gradnorm': [CURVE_START],
                            'hessian': [{'n': 14,
                                         'acc_full': 1.0,
                                         'acc_retrained': 1.0,
                                         'loss_auc': 0.5842,
                                         'loss_full': 0.0,
                                         'loss_retrained': 0.0}],
                            'less': [CURVE_START],
                            'less_own': [CURVE_START],
                            'random': [{'n': 14,
                                        'acc_full': 1.0,
                                        'acc_retrained': 1.0,
                                        'loss_auc': 0.6276,
                                        'loss_full': 0.0075,
                                        'loss_retrained': 0.0161}]},
                 'png': 'calibration/1f93aa0d-064b-4777-bf3e-c29b48b20684-gradnorm.png',
                 'by_method': {'gradnorm': {'n_free': 0, 'n_prune': 286},
                               'hessian': {'n_free': 0, 'n_prune': 286},
                               'less': {'n_free': 0, 'n_prune': 286},
                               'less_own': {'n_free': 0, 'n_prune': 286},
                               'random': {'n_free': 0, 'n_prune': 172}},
                 'n_train': 1430},
 'discovery': {'api_version': '1.0',
               'supported_identities': [{'identity_type': 'controller_customer_id', 'identity_format': 'raw'}],
               'supported_subject_request_types': ['erasure'],
               'processor_certificate': 'http://127.0.0.1:8011/opendsr/v1/certificate.pem'},
 'opendsr_status': {'api_version': '1.0', 'status': 'ok'},
 'metrics': '# HELP lethe_forget_requests_total Forget requests that reached a final status, by outcome.\n'
            '# TYPE lethe_forget_requests_total counter\n'
            'lethe_forget_requests_total{outcome="completed"} 1.0\n',
 'public_key': '-----BEGIN PUBLIC KEY-----\n'
               'MCowBQYDK2VwAyEADg1UA0yyVzZSHhlm1U824lEX8JLxiPZBa/27q3iQTTQ=\n'
               '-----END PUBLIC KEY-----\n'}
