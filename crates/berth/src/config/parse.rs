//! The value forms of the configuration file: sizes (`50GiB`) and durations (`30d`), and
//! the serde adapters the sections use for them. It only parses text; it never reads a
//! file.

use serde::Deserialize;

/// Parse `512MiB`, `50GiB`, `1TB`, `1000` (bytes). Binary (KiB, MiB, GiB, TiB) and
/// decimal (KB, MB, GB, TB) units.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size {s:?}: expected a number with a unit, like \"50GiB\"")
    })?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?}: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Parse `90s`, `5m`, `2h`, `7d` (or a plain number of seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration {s:?}: expected a number with s, m, h or d, like \"5m\"")
    })?;
    let mult: u64 = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {s:?}: use s, m, h or d"
            ));
        }
    };
    // Found by the config fuzz target: `13350170495401940308m` overflowed the multiply.
    let secs = n
        .checked_mul(mult)
        .ok_or_else(|| format!("duration {s:?} is too long"))?;
    Ok(std::time::Duration::from_secs(secs))
}

pub(super) fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    parse_size(&s).map_err(serde::de::Error::custom)
}

pub(super) fn de_opt_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let s = String::deserialize(d)?;
    parse_size(&s).map(Some).map_err(serde::de::Error::custom)
}

pub(super) fn de_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::time::Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

pub(super) fn de_opt_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

pub(super) fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_too_large_for_a_u64_are_refused() {
        assert!(
            parse_duration("13350170495401940308m")
                .unwrap_err()
                .contains("too long")
        );
        assert_eq!(
            parse_duration("2h").unwrap(),
            std::time::Duration::from_secs(7200)
        );
        assert!(
            parse_size("18446744073709551615KiB")
                .unwrap_err()
                .contains("too large")
        );
    }
}
