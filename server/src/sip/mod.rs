//! The SIP layer: parsing, stream framing, transactions and dialogs.
//!
//! Nothing here touches a socket or reads the clock. Messages come in as bytes with the time
//! they arrived; what to send, and when to be woken next, comes out.

pub mod digest;
pub mod error;
pub mod framing;
pub mod message;
pub mod register;
pub mod target;
pub mod uri;
pub mod validate;

pub use error::SipError;
pub use message::{CSeq, Header, Method, Rejected, SipMessage, StartLine, Via, reason_phrase};
pub use target::{ConnId, Target, TransportKind};
pub use uri::{NameAddr, SipUri};
pub mod transaction;
