//! lb-userspace library.
