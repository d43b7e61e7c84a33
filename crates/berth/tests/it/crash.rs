//! Crash-safety tests (written next).
