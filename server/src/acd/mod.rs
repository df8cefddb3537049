//! The automatic call distributor's brain: call types from the INVITE, queues with skills
//! and strategies, agent states. Pure: events and the time in, decisions out; the
//! distributor's service owns the one [`Acd`] and turns its decisions into SIP.

mod call_index;
pub mod config;
pub mod engine;
pub mod rules;

pub use engine::{
    Acd, AcdEvent, AgentState, AgentView, CallView, Decision, FailCause, OfferEnd, OfferResult,
    Outcome, Presence, Profile, QueueView, Snapshot,
};
pub use rules::{CallFacts, CallType, Classifier};

#[cfg(test)]
mod proptests;
