//! Pull-through cache fault injection (written next).
