//! The distributor: where callers' calls arrive, an agent is chosen, and the call is handed to
//! the buffer server where that agent is logged in.

pub mod agents;
pub mod service;
pub mod shell;
