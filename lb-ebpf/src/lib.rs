#![no_std]
// Exists so that lb-userspace can name this crate as a build-dependency and be rebuilt when it changes.
