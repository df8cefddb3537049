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
