//! Pull-through cache against a real upstream (written next).
