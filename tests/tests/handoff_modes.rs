//! The same calls through each of the four hand-off modes (tunnel, uri, message, table): the
//! agent's identifier reaches the buffer server every way, and the call works end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agent_edge_tests::{System, WAIT};

/// Answer and caller hang-up, agent hang-up, and cancel while ringing, through one mode,
/// each on a fresh system so one agent takes each call.
fn calls_through(mode: &str) {
    let cases = [
        (
            "agent_answer.xml",
            "caller_call_hangup.xml",
            "caller-hangs-up",
        ),
        (
            "agent_answer_hangup.xml",
            "caller_call_wait_bye.xml",
            "agent-hangs-up",
        ),
        (
            "agent_ring_cancel.xml",
            "caller_cancel.xml",
            "cancel-while-ringing",
        ),
    ];
    for (agent_scenario, caller_scenario, what) in cases {
        let mut sys = System::start_with("", &format!("handoff = \"{mode}\""));
        // The distributor agreed to hand calls this way; the buffer server takes no other.
        sys.edge.wait_line(&format!("edge-up edge-1 {mode}"), WAIT);
        sys.one_call(agent_scenario, caller_scenario, &format!("{mode}-{what}"));
    }
}

macro_rules! mode_tests {
    ($($name:ident => $mode:literal),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                calls_through($mode);
            }
        )*
    };
}

mode_tests! {
    handoff_by_tunnel_frame => "tunnel",
    handoff_by_request_uri => "uri",
    handoff_by_sip_message => "message",
    handoff_by_route_table => "table",
}
