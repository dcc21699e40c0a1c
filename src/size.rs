//! Human sizes (`64MiB`, `8M`, `1.5GB`) and rates (`5MiB`, `40Mbit`) parsed once, at
//! the edge, into bytes and bytes per second.

use anyhow::{bail, Context, Result};

/// Parses a size such as `1048576`, `64k`, `8MiB`, `1.5G`. `K`/`M`/`G`/`T` and the `iB`
/// forms are binary (1024); `KB`/`MB`/`GB`/`TB` are decimal, as in most tools.
pub fn parse_size(text: &str) -> Result<u64> {
    let (value, unit) = split_number(text, "size", "64MiB")?;
    let mult = byte_unit(unit).with_context(|| {
        format!("invalid size {text:?}: unknown unit {unit:?} (use KiB, MiB, GiB, KB, MB or GB)")
    })?;
    whole(value * mult, "bytes").with_context(|| format!("invalid size {text:?}"))
}

/// Parses a rate into bytes per second: a byte unit as [`parse_size`] reads it
/// (`5MiB` is 5 MiB per second), or a decimal bit rate (`40Mbit` is 5,000,000 bytes
/// per second), because uplink caps are quoted in Mbit/s. An optional `/s` may follow.
/// A bare number is refused: rsync reads one as KiB/s, relayup once read it as bytes/s,
/// and a rate off by a factor of 1024 must not pass unnoticed.
pub fn parse_rate(text: &str) -> Result<u64> {
    const HINT: &str = "give a unit, e.g. 5MiB (per second) or 40Mbit";
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let (value, unit) = split_number(t, "rate", "5MiB")?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" => bail!("{HINT}"),
        "kbit" => 1e3 / 8.0,
        "mbit" => 1e6 / 8.0,
        "gbit" => 1e9 / 8.0,
        _ => byte_unit(unit).with_context(|| {
            format!("unknown unit {unit:?}: use KiB, MiB, GiB, KB, MB or GB (per second), or Kbit, Mbit or Gbit")
        })?,
    };
    let rate = whole(value * mult, "bytes per second")?;
    if rate == 0 {
        bail!("must be at least 1 byte per second");
    }
    Ok(rate)
}

/// Splits `64MiB` into 64.0 and `MiB` (surrounding spaces dropped).
fn split_number<'a>(text: &'a str, what: &str, example: &str) -> Result<(f64, &'a str)> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        bail!("invalid {what} {text:?}: expected a number with a unit, e.g. {example}");
    }
    let value: f64 = num
        .parse()
        .with_context(|| format!("invalid {what} {text:?}: {num:?} is not a number"))?;
    Ok((value, unit.trim()))
}

/// Bytes in one `unit`: `K`/`M`/`G`/`T` and the `iB` forms are binary (1024),
/// `KB`/`MB`/`GB`/`TB` decimal, as in most tools; empty or `B` is one byte.
fn byte_unit(unit: &str) -> Option<f64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return None,
    })
}

/// `bytes` as an integer, if it is one that fits; `what` names the unit for errors.
fn whole(bytes: f64, what: &str) -> Result<u64> {
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        bail!("too large");
    }
    if bytes.fract() != 0.0 {
        bail!("not a whole number of {what}");
    }
    Ok(bytes as u64)
}

/// Formats bytes for people: `1.5 GiB`, `12.0 MiB`, `512 B`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        let cases = [
            ("0", 0),
            ("1", 1),
            ("512B", 512),
            ("64k", 64 * 1024),
            ("8MiB", 8 << 20),
            ("8M", 8 << 20),
            ("1.5G", 3 << 29),
            ("2 GiB", 2 << 30),
            ("10MB", 10_000_000),
            ("1kb", 1000),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in [
            "",
            "MiB",
            "-1",
            "1.2.3M",
            "12 parsecs",
            "0.5B",
            "99999999999T",
        ] {
            assert!(parse_size(text).is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn rates_in_bytes_and_bits() {
        let cases = [
            ("5MiB", 5 << 20),
            ("5mib", 5 << 20),
            ("5M", 5 << 20),
            ("2MB", 2_000_000),
            ("512KiB", 512 << 10),
            ("1B", 1),
            ("1.5KiB", 1536),
            ("1Mbit", 125_000),
            ("8Mbit", 1_000_000),
            ("40mbit", 5_000_000),
            ("40MBIT", 5_000_000),
            ("100Kbit", 12_500),
            ("0.5Mbit", 62_500),
            ("1Gbit", 125_000_000),
            ("2.5gbit", 312_500_000),
            ("40Mbit/s", 5_000_000),
            ("5MiB/s", 5 << 20),
            (" 8 Mbit ", 1_000_000),
        ];
        for (text, want) in cases {
            assert_eq!(parse_rate(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn a_bare_rate_is_refused_with_a_hint() {
        for text in ["1000", "5000", "0", "1.5", "1000/s"] {
            let err = format!("{:#}", parse_rate(text).unwrap_err());
            assert_eq!(
                err, "give a unit, e.g. 5MiB (per second) or 40Mbit",
                "{text}"
            );
        }
    }

    #[test]
    fn bad_rates_are_refused() {
        for (text, says) in [
            ("", "expected a number"),
            ("Mbit", "expected a number"),
            ("0MiB", "at least 1 byte per second"),
            ("0Mbit", "at least 1 byte per second"),
            ("1.001Kbit", "whole number of bytes per second"),
            ("0.5B", "whole number of bytes per second"),
            ("5 parsecs", "unknown unit \"parsecs\""),
            ("5Mbps", "unknown unit"),
            ("5MiB/h", "unknown unit"),
            ("-5MiB", "expected a number"),
            ("99999999999Tbit", "unknown unit"),
            ("99999999999T", "too large"),
        ] {
            let err = format!("{:#}", parse_rate(text).unwrap_err());
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
