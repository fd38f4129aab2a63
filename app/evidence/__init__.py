"""Reference pools and the evidence behind "free" and the audit."""
