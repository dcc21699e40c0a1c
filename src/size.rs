//! Human sizes (`64MiB`, `8M`, `1.5GB`) parsed once, at the edge, into bytes.

use anyhow::{bail, Context, Result};

/// Parses a size such as `1048576`, `64k`, `8MiB`, `1.5G`. `K`/`M`/`G`/`T` and the `iB`
/// forms are binary (1024); `KB`/`MB`/`GB`/`TB` are decimal, as in most tools.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        bail!("invalid size {text:?}: expected a number with an optional unit, e.g. 64MiB");
    }
    let value: f64 = num
        .parse()
        .with_context(|| format!("invalid size {text:?}: {num:?} is not a number"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        other => {
            bail!("invalid size {text:?}: unknown unit {other:?} (use KiB, MiB, GiB, KB, MB or GB)")
        }
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        bail!("invalid size {text:?}: too large");
    }
    if bytes.fract() != 0.0 {
        bail!("invalid size {text:?}: not a whole number of bytes");
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
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
