//! RTP (RFC 3550) packets for a stream this server originates: one SSRC, sequence numbers
//! and timestamps that advance as a receiver expects. Pure.

/// Samples in one 20 ms G.711 packet.
pub const SAMPLES_PER_PACKET: usize = 160;

/// The header state of one outgoing stream.
#[derive(Debug, Clone)]
pub struct RtpStream {
    payload_type: u8,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    started: bool,
}

impl RtpStream {
    /// `seq` and `timestamp` start where given (RFC 3550 wants them random).
    pub fn new(payload_type: u8, ssrc: u32, seq: u16, timestamp: u32) -> RtpStream {
        RtpStream {
            payload_type: payload_type & 0x7f,
            ssrc,
            seq,
            timestamp,
            started: false,
        }
    }

    /// The next packet carrying `payload` (`samples` long); the first has the marker bit.
    pub fn packet(&mut self, payload: &[u8], samples: u32) -> Vec<u8> {
        let mut p = Vec::with_capacity(12 + payload.len());
        p.push(0x80);
        let marker = if self.started { 0 } else { 0x80 };
        p.push(marker | self.payload_type);
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&self.timestamp.to_be_bytes());
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        self.started = true;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(samples);
        p
    }
}

impl RtpStream {
    /// A packet with the caller's numbering (a relay keeps the source's sequence numbers
    /// and timestamps, rebased), under this stream's SSRC.
    pub fn packet_at(
        &mut self,
        payload_type: u8,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut p = Vec::with_capacity(12 + payload.len());
        p.push(0x80);
        p.push(if marker { 0x80 } else { 0 } | (payload_type & 0x7f));
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&timestamp.to_be_bytes());
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }
}

/// Plays encoded G.711 audio as 20 ms packets, from the start again at the end.
#[derive(Debug, Clone)]
pub struct LoopPlayer {
    audio: std::sync::Arc<[u8]>,
    pos: usize,
    stream: RtpStream,
}

impl LoopPlayer {
    pub fn new(audio: std::sync::Arc<[u8]>, stream: RtpStream) -> LoopPlayer {
        LoopPlayer {
            audio,
            pos: 0,
            stream,
        }
    }

    /// The next 20 ms packet.
    pub fn next_packet(&mut self) -> Vec<u8> {
        let mut frame = [0u8; SAMPLES_PER_PACKET];
        for byte in &mut frame {
            *byte = self.audio.get(self.pos).copied().unwrap_or(0xff);
            self.pos += 1;
            if self.pos >= self.audio.len() {
                self.pos = 0;
            }
        }
        self.stream.packet(&frame, SAMPLES_PER_PACKET as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_advance_sequence_and_timestamp_and_loop_the_audio() {
        let audio: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
        let mut player = LoopPlayer::new(audio.into(), RtpStream::new(0, 0xdead_beef, 65535, 1000));
        let first = player.next_packet();
        let second = player.next_packet();
        assert_eq!(first.len(), 12 + 160);
        assert_eq!(&first[..2], &[0x80, 0x80], "version 2, marker, PCMU");
        assert_eq!(second[1], 0x00, "marker only on the first");
        assert_eq!(u16::from_be_bytes([first[2], first[3]]), 65535);
        assert_eq!(
            u16::from_be_bytes([second[2], second[3]]),
            0,
            "sequence wraps"
        );
        assert_eq!(
            u32::from_be_bytes([second[4], second[5], second[6], second[7]]),
            1160
        );
        assert_eq!(&first[8..12], &0xdead_beef_u32.to_be_bytes());
        assert_eq!(
            first[12..],
            (0..160u32).map(|i| i as u8).collect::<Vec<_>>()[..]
        );
        // 40 bytes left, then the audio again from its start.
        assert_eq!(
            second[12..52],
            (160..200u32).map(|i| i as u8).collect::<Vec<_>>()[..]
        );
        assert_eq!(second[52], 0);
    }
}

/// The parts of a received RTP packet a relay needs. Borrowed from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpView<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

/// Reads an RTP packet (RFC 3550 §5.1): version 2, CSRCs, header extension and padding
/// skipped. `None` for anything else (RTCP included: payload types 72-76 with the marker).
pub fn parse(packet: &[u8]) -> Option<RtpView<'_>> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let csrcs = usize::from(packet[0] & 0x0f);
    let mut start = 12 + 4 * csrcs;
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(start..start + 4)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    let mut end = packet.len();
    if packet[0] & 0x20 != 0 {
        let pad = usize::from(*packet.last()?);
        end = end.checked_sub(pad)?;
    }
    let payload = packet.get(start..end)?;
    let payload_type = packet[1] & 0x7f;
    if (72..=76).contains(&payload_type) {
        return None; // RTCP on the RTP port (rtcp-mux)
    }
    Some(RtpView {
        marker: packet[1] & 0x80 != 0,
        payload_type,
        seq: u16::from_be_bytes([packet[2], packet[3]]),
        timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
        payload,
    })
}

/// Keeps one outgoing stream's sequence numbers and timestamps continuous while the
/// incoming stream it forwards changes SSRC or jumps (a re-INVITE, a new source after
/// hold): within one source, gaps and steps are kept as they are, so loss and silence stay
/// visible to the receiver; a new source continues one packet (20 ms) after the last.
#[derive(Debug, Clone, Default)]
pub struct Rebase {
    source: Option<u32>,
    /// Added to the source's sequence numbers and timestamps.
    seq_offset: u64,
    ts_offset: u32,
    /// Extended last sequence number of the source (for rollover), and the last output.
    last_in: Option<u64>,
    last_out: Option<(u64, u32)>,
}

impl Rebase {
    /// The extended output sequence number and output timestamp for a packet.
    pub fn map(&mut self, ssrc: u32, seq: u16, timestamp: u32) -> (u64, u32) {
        if self.source != Some(ssrc) {
            self.source = Some(ssrc);
            let (next_seq, next_ts) =
                self.last_out.map_or((u64::from(seq), timestamp), |(s, t)| {
                    (s + 1, t.wrapping_add(160))
                });
            self.seq_offset = next_seq.wrapping_sub(u64::from(seq));
            self.ts_offset = next_ts.wrapping_sub(timestamp);
            self.last_in = None;
        }
        let extended = match self.last_in {
            None => u64::from(seq),
            Some(last) => {
                // The extension nearest the last one (RFC 3550 A.1 in spirit).
                let roc = last >> 16;
                let candidates =
                    [roc.wrapping_sub(1), roc, roc + 1].map(|r| (r << 16) | u64::from(seq));
                candidates
                    .into_iter()
                    .min_by_key(|c| c.abs_diff(last))
                    .unwrap_or(u64::from(seq))
            }
        };
        if self.last_in.is_none_or(|l| extended > l) {
            self.last_in = Some(extended);
        }
        let out = (
            extended.wrapping_add(self.seq_offset),
            timestamp.wrapping_add(self.ts_offset),
        );
        if self.last_out.is_none_or(|(s, _)| out.0 > s) {
            self.last_out = Some(out);
        }
        out
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn packets_are_read_and_rtcp_and_garbage_refused() {
        let mut s = RtpStream::new(8, 42, 7, 1000);
        let p = s.packet(b"abc", 160);
        let v = parse(&p).unwrap();
        assert_eq!(
            (v.payload_type, v.seq, v.timestamp, v.ssrc),
            (8, 7, 1000, 42)
        );
        assert!(v.marker);
        assert_eq!(v.payload, b"abc");
        // With one CSRC, an extension of one word and two bytes of padding.
        let mut q = vec![0xb1, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 9, 9, 9, 9];
        q.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]);
        q.extend_from_slice(b"xy\0\x02");
        assert_eq!(parse(&q).unwrap().payload, b"xy");
        for bad in [
            &b""[..],
            b"\x80\x00\x00",
            b"\x40\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00",
            b"\x80\xc8\x00\x06\x00\x00\x00\x01\x00\x00\x00\x00",
            b"\xa0\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x20",
            b"\x90\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rebase_keeps_gaps_and_continues_across_a_new_source() {
        let mut r = Rebase::default();
        assert_eq!(r.map(1, 65534, 100), (65534, 100));
        assert_eq!(r.map(1, 65535, 260), (65535, 260));
        assert_eq!(r.map(1, 1, 580), (65537, 580), "rollover, one lost");
        assert_eq!(
            r.map(1, 0, 420),
            (65536, 420),
            "late packet keeps its place"
        );
        assert_eq!(
            r.map(2, 9000, 5),
            (65538, 740),
            "new source goes on from the last"
        );
        assert_eq!(r.map(2, 9001, 165), (65539, 900));
    }
}
