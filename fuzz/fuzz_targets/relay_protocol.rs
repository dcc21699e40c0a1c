//! The relay reads requests from whoever is on its stdin, and the client reads events
//! from a peer: neither may panic or allocate without bound on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relayup::remote::protocol;

fuzz_target!(|data: &[u8]| {
    let mut input = std::io::Cursor::new(data);
    while let Ok(Some(line)) = protocol::read_line(&mut input) {
        if let Ok(req) = protocol::parse_request(&line) {
            // Whatever parses must serialize back and parse to the same request.
            let again =
                protocol::parse_request(protocol::to_line(&req).trim_end()).expect("round trip");
            assert_eq!(again, req);
        }
        let _ = protocol::parse_event(&line);
    }
});
