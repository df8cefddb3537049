//! A phone's `Authorization: Digest …` value and nonce, as the edge and the distributor read
//! them: parsing and checking never panic, and what parses re-checks consistently.
#![no_main]

use agent_edge::sip::digest::{self, Algorithm, Credentials, Nonces};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(creds) = Credentials::parse(text) {
        let ha1 = digest::ha1(creds.algorithm, &creds.username, &creds.realm, "password");
        let expected = creds.expected(&ha1, "REGISTER");
        let len = match creds.algorithm {
            Algorithm::Sha256 => 64,
            Algorithm::Md5 => 32,
        };
        assert_eq!(expected.len(), len);
        assert_eq!(creds.verify(&ha1, "REGISTER"), creds.response == expected);
    }
    let nonces = Nonces::new(b"fuzz");
    let _ = nonces.check(text, 1_000);
});
