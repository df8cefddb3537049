//! Announcements (queue ringback, music) read from WAV files at start-up: 8 kHz mono, as
//! 16-bit PCM, µ-law or A-law. Kept encoded in both G.711 laws, so playing one costs a copy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::g711;

/// Largest announcement file read (about ten minutes of 16-bit audio).
pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;

/// Why an announcement file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AnnouncementError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a WAV file this server plays.
    #[error("{path}: {why} (need a WAV file, 8000 Hz mono, 16-bit PCM, µ-law or A-law)")]
    Format { path: PathBuf, why: String },
}

/// A G.711 law.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    /// PCMU, RTP payload type 0.
    Ulaw,
    /// PCMA, RTP payload type 8.
    Alaw,
}

impl Law {
    pub fn payload_type(self) -> u8 {
        match self {
            Law::Ulaw => 0,
            Law::Alaw => 8,
        }
    }
}

/// An announcement, encoded both ways.
#[derive(Debug, Clone)]
pub struct Announcement {
    ulaw: Arc<[u8]>,
    alaw: Arc<[u8]>,
}

impl Announcement {
    pub fn load(path: &Path) -> Result<Announcement, AnnouncementError> {
        let read = |source| AnnouncementError::Read {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        let format = |why: &str| AnnouncementError::Format {
            path: path.to_owned(),
            why: why.to_owned(),
        };
        if size > MAX_FILE_BYTES {
            return Err(format("larger than 10 MiB"));
        }
        let bytes = std::fs::read(path).map_err(read)?;
        Announcement::from_wav(&bytes).map_err(|why| format(&why))
    }

    /// Parses a WAV file's bytes.
    pub fn from_wav(bytes: &[u8]) -> Result<Announcement, String> {
        if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
            return Err("not a RIFF/WAVE file".into());
        }
        let mut rest = &bytes[12..];
        let mut fmt: Option<(u16, u16, u32, u16)> = None;
        while rest.len() >= 8 {
            let id = &rest[..4];
            let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
            let body = rest.get(8..8 + len).ok_or("a chunk runs past the end")?;
            match id {
                b"fmt " => {
                    if body.len() < 16 {
                        return Err("short fmt chunk".into());
                    }
                    let le16 = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                    let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                    fmt = Some((le16(0), le16(2), rate, le16(14)));
                }
                b"data" => {
                    let (tag, channels, rate, bits) = fmt.ok_or("data before fmt")?;
                    if channels != 1 || rate != 8000 {
                        return Err(format!("{channels} channel(s) at {rate} Hz"));
                    }
                    return Self::from_samples(tag, bits, body);
                }
                _ => {}
            }
            // Chunks are padded to an even length.
            rest = rest.get(8 + len + (len & 1)..).unwrap_or_default();
        }
        Err("no data chunk".into())
    }

    fn from_samples(tag: u16, bits: u16, data: &[u8]) -> Result<Announcement, String> {
        let (ulaw, alaw): (Vec<u8>, Vec<u8>) = match (tag, bits) {
            (1, 16) => data
                .chunks_exact(2)
                .map(|s| i16::from_le_bytes([s[0], s[1]]))
                .map(|s| (g711::linear_to_ulaw(s), g711::linear_to_alaw(s)))
                .unzip(),
            (7, 8) => data
                .iter()
                .map(|&u| (u, g711::linear_to_alaw(g711::ulaw_to_linear(u))))
                .unzip(),
            (6, 8) => data
                .iter()
                .map(|&a| (g711::linear_to_ulaw(g711::alaw_to_linear(a)), a))
                .unzip(),
            _ => return Err(format!("format {tag} with {bits} bits per sample")),
        };
        if ulaw.len() < 160 {
            return Err("shorter than 20 ms".into());
        }
        Ok(Announcement {
            ulaw: ulaw.into(),
            alaw: alaw.into(),
        })
    }

    pub fn encoded(&self, law: Law) -> Arc<[u8]> {
        match law {
            Law::Ulaw => self.ulaw.clone(),
            Law::Alaw => self.alaw.clone(),
        }
    }
}

/// A WAV file's bytes for `data` in the given format tag (1 PCM, 6 A-law, 7 µ-law).
pub fn wav_bytes(tag: u16, bits: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(44 + data.len());
    let block = bits / 8;
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&(8000 * u32::from(block)).to_le_bytes());
    out.extend_from_slice(&block.to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_files_play_byte_for_byte_and_pcm_is_encoded() {
        let ulaw: Vec<u8> = (0..800u32).map(|i| (i * 7) as u8).collect();
        let a = Announcement::from_wav(&wav_bytes(7, 8, &ulaw)).unwrap();
        assert_eq!(&a.encoded(Law::Ulaw)[..], &ulaw[..]);
        let pcm: Vec<u8> = (0..400i16).flat_map(|i| (i * 50).to_le_bytes()).collect();
        let b = Announcement::from_wav(&wav_bytes(1, 16, &pcm)).unwrap();
        assert_eq!(b.encoded(Law::Alaw).len(), 400);
        assert_eq!(b.encoded(Law::Ulaw)[0], g711::linear_to_ulaw(0));
    }

    #[test]
    fn other_files_are_refused_with_the_reason() {
        let mut stereo = wav_bytes(1, 16, &[0; 640]);
        stereo[22] = 2;
        for (bytes, why) in [
            (b"not a wav".to_vec(), "RIFF"),
            (stereo, "2 channel"),
            (wav_bytes(3, 32, &[0; 640]), "format 3"),
            (wav_bytes(7, 8, &[0; 10]), "20 ms"),
            (wav_bytes(7, 8, &[0; 400])[..60].to_vec(), "past the end"),
        ] {
            let err = Announcement::from_wav(&bytes).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
