//! The buffer server: registrar for its agents, routing table, and the connection processor
//! that re-addresses every message between a call's client leg and agent leg.

pub mod digest_checks;
pub mod media;
pub mod media_io;
pub mod readdress;
pub mod registrar;
pub mod relay_link;
pub mod routing_table;
pub mod service;
pub mod shell;
pub mod unregistered;
