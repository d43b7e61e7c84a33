//! CLI tests (written next).
