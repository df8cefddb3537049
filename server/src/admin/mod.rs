//! Agent identity: the distributor's signing key, agent tokens (JWT, ES256) and their
//! verification on buffer servers, which hold only public keys; and the admin API, with the
//! call records it serves.

pub mod api;
pub mod calls_api;
pub mod console;
pub mod keys;
pub mod sip_passwords;
pub mod store;
pub mod tokens;
