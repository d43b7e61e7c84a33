//! API tests (written next).
