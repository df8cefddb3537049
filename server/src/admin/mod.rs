//! Agent identity: the distributor's signing key, agent tokens (JWT, ES256) and their
//! verification on buffer servers, which hold only public keys.

pub mod api;
pub mod keys;
pub mod store;
pub mod tokens;
