//! Audit trail (in progress).
