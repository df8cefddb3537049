//! The one run loop of every role. A role is a sans-IO [`Core`] (the shape of str0m's `Rtc`
//! and quinn-proto's `Connection`) and a [`Shell`] that owns its sockets, channels and tasks;
//! [`run`] joins them: it waits for an input or the core's next timer, hands it to the core,
//! then carries out everything the core wants done before waiting again.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::sip::Target;
use crate::transport::Transports;

/// A role's decisions, with no sockets and no clock reads.
///
/// The one rule for a caller: after every [`Core::handle`] or [`Core::handle_timeout`], drain
/// [`Core::poll_output`] until it returns `None`, then ask [`Core::poll_timeout`] when to call
/// [`Core::handle_timeout`] next. Inputs that arrive meanwhile wait; nothing else does.
pub trait Core {
    /// What the core is told: messages from peers, closed connections, commands.
    type Input;
    /// What the core wants done: messages to send, frames, events.
    type Output;

    /// One input, at `now`.
    fn handle(&mut self, input: Self::Input, now: Instant);
    /// The time [`Core::poll_timeout`] named has come (it may find nothing to do).
    fn handle_timeout(&mut self, now: Instant);
    /// The next thing to do, in order.
    fn poll_output(&mut self) -> Option<Self::Output>;
    /// When [`Core::handle_timeout`] is due; `None`: no timer.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The share of the last [`LOAD_WINDOW`] the loop spent handling inputs rather than
    /// waiting for one (1.0: it never waited, so inputs queue), for a core that sheds load.
    fn load(&mut self, _busy: f64) {}
}

/// How often [`Core::load`] is told.
pub const LOAD_WINDOW: Duration = Duration::from_millis(100);

/// The IO around a core: where its inputs come from and how its outputs are carried out.
pub trait Shell<C: Core> {
    /// Waits for the next input; `None` when the role's sources have closed (it stops).
    fn next_input(&mut self) -> impl Future<Output = Option<C::Input>> + Send;
    /// Carries out one output. A failure the core must know of (a send that failed at once)
    /// comes back as an input, handed to the core before the next output.
    fn perform(&mut self, output: C::Output, now: Instant) -> Option<C::Input>;
}

/// Serves until the shell's sources close.
pub async fn run<C: Core, S: Shell<C>>(mut core: C, mut shell: S) {
    let mut window = Instant::now();
    let mut busy = Duration::ZERO;
    let mut handled = None;
    loop {
        flush(&mut core, &mut shell, Instant::now());
        let waiting = Instant::now();
        if let Some(since) = handled.take() {
            busy += waiting.saturating_duration_since(since);
        }
        let span = waiting.saturating_duration_since(window);
        if span >= LOAD_WINDOW {
            core.load(busy.as_secs_f64() / span.as_secs_f64());
            (window, busy) = (waiting, Duration::ZERO);
        }
        let input = match core.poll_timeout() {
            Some(at) => tokio::select! {
                input = shell.next_input() => Some(input),
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => None,
            },
            None => Some(shell.next_input().await),
        };
        let now = Instant::now();
        handled = Some(now);
        match input {
            Some(Some(input)) => core.handle(input, now),
            Some(None) => break,
            None => core.handle_timeout(now),
        }
    }
}

/// Sends one SIP message for a shell; `Some(to)` when the send failed at once, for the core
/// to fail that peer's transactions.
pub fn send_sip(transports: &Transports, to: Target, bytes: Bytes) -> Option<Target> {
    match transports.send(&to, bytes) {
        Ok(()) => None,
        Err(e) => {
            tracing::debug!(to = %to.addr, error = %e, "send failed");
            Some(to)
        }
    }
}

fn flush<C: Core, S: Shell<C>>(core: &mut C, shell: &mut S, now: Instant) {
    while let Some(output) = core.poll_output() {
        if let Some(feedback) = shell.perform(output, now) {
            core.handle(feedback, now);
        }
    }
}
