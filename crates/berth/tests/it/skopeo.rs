//! Real-client tests with skopeo and umoci (written next).
