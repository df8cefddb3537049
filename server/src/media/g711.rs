//! G.711 µ-law and A-law (ITU-T G.711), sample by sample. Used to turn an announcement file
//! into the codec a caller offered; calls themselves pass G.711 through untouched.

const BIAS: i32 = 0x84;
const CLIP: i32 = 32635;

/// 16-bit linear PCM to µ-law.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 { 0x80 } else { 0 };
    if s < 0 {
        s = -s;
    }
    s = s.min(CLIP) + BIAS;
    let exponent = (7 - (s >> 7).leading_zeros().saturating_sub(24) as i32).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// µ-law to 16-bit linear PCM.
pub fn ulaw_to_linear(byte: u8) -> i16 {
    let b = !byte;
    let sign = b & 0x80;
    let exponent = i32::from((b >> 4) & 0x07);
    let mantissa = i32::from(b & 0x0f);
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    let s = if sign != 0 { -magnitude } else { magnitude };
    s as i16
}

/// 16-bit linear PCM to A-law.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let s = i32::from(sample) >> 3; // 13-bit
    let (sign, mut m) = if s >= 0 { (0x80u8, s) } else { (0u8, -s - 1) };
    m = m.min(0x0fff);
    let code = if m < 32 {
        (m >> 1) as u8
    } else {
        let exponent = (31 - (m as u32).leading_zeros()) as i32 - 4; // 1..=7
        ((exponent << 4) as u8) | (((m >> exponent) & 0x0f) as u8)
    };
    (sign | code) ^ 0x55
}

/// A-law to 16-bit linear PCM.
pub fn alaw_to_linear(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let exponent = i32::from((a >> 4) & 0x07);
    let mantissa = i32::from(a & 0x0f);
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    let s = if a & 0x80 != 0 { magnitude } else { -magnitude };
    s as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Silence and full scale, from the G.711 tables.
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(linear_to_ulaw(-1), 0x7f);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xaa);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2a);
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(alaw_to_linear(0xd5), 8);
    }

    #[test]
    fn every_code_survives_decode_then_encode() {
        for code in 0..=255u8 {
            let u = ulaw_to_linear(code);
            // µ-law has two zeros (0x7f and 0xff); both decode to 0, which encodes to 0xff.
            if code != 0x7f {
                assert_eq!(linear_to_ulaw(u), code, "µ-law {code:#04x} → {u}");
            }
            let a = alaw_to_linear(code);
            assert_eq!(linear_to_alaw(a), code, "A-law {code:#04x} → {a}");
        }
    }

    #[test]
    fn quantisation_error_is_small() {
        for s in (-32768i32..=32767).step_by(97) {
            let s = s as i16;
            let u = i32::from(ulaw_to_linear(linear_to_ulaw(s)));
            let a = i32::from(alaw_to_linear(linear_to_alaw(s)));
            let tolerance = (i32::from(s).abs() / 16).max(16);
            assert!((u - i32::from(s)).abs() <= tolerance, "µ-law {s} → {u}");
            assert!((a - i32::from(s)).abs() <= tolerance, "A-law {s} → {a}");
        }
    }
}
