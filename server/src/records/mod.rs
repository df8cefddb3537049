//! Call records: one per call the distributor handled, answered or not, kept in the SQLite
//! store and served by the admin API (`/calls`, `/calls.csv`). The distributor core builds
//! them ([`recorder`], sans-IO, from the ACD's events and the SIP it proxies); a thread of
//! their own writes them ([`writer`]), so the store's troubles never hold up a call.

pub mod record;
pub mod recorder;
pub mod store;
pub mod writer;

pub use record::CallRecord;
pub use recorder::{RecordOutput, Recorder, Side};
pub use writer::{RecordWriter, WriterSettings};
