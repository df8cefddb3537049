//! Fresh identifiers for tags, Call-IDs and branches: random, so that nothing about one leg
//! (or about this server's internals) can be read from the identifiers of another.

/// A From/To tag (RFC 3261 §19.3 asks for at least 32 random bits; this has 64).
pub fn tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A Call-ID for a leg this server starts (128 random bits).
pub fn call_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
