//! The value forms of the configuration file: sizes (`50GiB`) and durations (`30d`), and
//! the serde adapters the sections use for them. It only parses text; it never reads a
//! file.

use super::ValueError;
use serde::Deserialize;

/// Parse `512MiB`, `50GiB`, `1TB`, `1000` (bytes), with `bytesize`: binary (KiB, MiB,
/// GiB, TiB) and decimal (KB, MB, GB, TB) units, in any case, a space and a fraction
/// (`1.5GiB`) allowed. A size beyond a u64 is refused.
pub fn parse_size(s: &str) -> Result<u64, ValueError> {
    let t = s.trim();
    let bytes = t
        .parse::<bytesize::ByteSize>()
        .map_err(|reason| ValueError::Size {
            text: s.to_owned(),
            reason,
        })?
        .as_u64();
    // bytesize saturates at u64::MAX instead of refusing what does not fit: that result
    // stands only when the number times its unit is exactly u64::MAX.
    if bytes == u64::MAX && !is_exactly_u64_max(t) {
        return Err(ValueError::SizeTooLarge { text: s.to_owned() });
    }
    Ok(bytes)
}

/// Whether `t`, a size bytesize read as u64::MAX, is that many bytes rather than more.
fn is_exactly_u64_max(t: &str) -> bool {
    if t.parse::<u64>().is_ok() {
        return true;
    }
    let (num, unit) = t.split_at(
        t.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len()),
    );
    let factor = format!("1{}", unit.trim_start()).parse::<bytesize::ByteSize>();
    matches!(
        (num.parse::<u64>(), factor),
        (Ok(n), Ok(f)) if n.checked_mul(f.as_u64()) == Some(u64::MAX)
    )
}

/// Parse `90s`, `5m`, `2h`, `7d` (or a plain number of seconds), with `humantime`; sums
/// (`1h 30m`) and fractions (`1.5h`) too. The units are s, m, h and d only: humantime
/// knows more, among them `M` for months, which a `5M` meant as minutes would get.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, ValueError> {
    let t = s.trim();
    if let Some(unit) = t
        .split(|c: char| !c.is_alphabetic())
        .find(|u| !u.is_empty() && !matches!(*u, "s" | "m" | "h" | "d"))
    {
        return Err(ValueError::DurationUnit {
            text: s.to_owned(),
            unit: unit.to_owned(),
        });
    }
    // humantime wants a unit after every number; a bare number is seconds.
    let with_unit;
    let text = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        with_unit = format!("{t}s");
        &with_unit
    } else {
        t
    };
    humantime::parse_duration(text).map_err(|error| match error {
        // Found by the config fuzz target: `13350170495401940308m` overflowed the multiply.
        humantime::DurationError::NumberOverflow => {
            ValueError::DurationTooLong { text: s.to_owned() }
        }
        error => ValueError::Duration {
            text: s.to_owned(),
            error,
        },
    })
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
        assert!(matches!(
            parse_duration("13350170495401940308m"),
            Err(ValueError::DurationTooLong { .. })
        ));
        assert_eq!(
            parse_duration("2h").unwrap(),
            std::time::Duration::from_secs(7200)
        );
        assert!(matches!(
            parse_size("18446744073709551615KiB"),
            Err(ValueError::SizeTooLarge { .. })
        ));
    }

    #[test]
    fn the_documented_forms_parse_as_before() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs());
        for (text, want) in [
            ("90", 90),
            ("0", 0),
            ("0s", 0),
            ("90s", 90),
            ("5m", 300),
            (" 2h ", 7200),
            ("7d", 7 * 86400),
            ("30 d", 30 * 86400),
            ("1h30m", 5400),
            ("18446744073709551615s", u64::MAX),
            (
                "00000000000000000000000000013350170495401940308",
                13350170495401940308,
            ),
        ] {
            assert_eq!(secs(text), Ok(want), "{text:?}");
        }
        for bad in [
            "",
            "s",
            "5 weeks",
            "5M",
            "5ms",
            "1y",
            "-5m",
            "5x",
            "5m!",
            "1.",
            "18446744073709551616",
        ] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains("duration"), "{bad:?}: {e}");
        }
        assert!(matches!(
            parse_duration("18446744073709551616"),
            Err(ValueError::DurationTooLong { .. })
        ));
        assert!(matches!(
            parse_duration("1d 18446744073709551615s"),
            Err(ValueError::DurationTooLong { .. })
        ));

        for (text, want) in [
            ("0", 0),
            ("1000", 1000),
            ("1000B", 1000),
            ("64MiB", 64 << 20),
            (" 20GiB ", 20 << 30),
            ("1KiB", 1024),
            ("1 KiB", 1024),
            ("500MB", 500_000_000),
            ("1TB", 1_000_000_000_000),
            ("2TiB", 2 << 40),
            ("1.5KiB", 1536),
            ("18446744073709551615", u64::MAX),
            ("18446744073709551615B", u64::MAX),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text:?}");
        }
        for bad in ["", "lots", "5 parsecs", "GiB", "-1KiB", "5 KiBs"] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.contains("size"), "{bad:?}: {e}");
        }
        for big in ["16EiB", "99999999999999999999KB", "17179869184GiB"] {
            assert!(
                matches!(parse_size(big), Err(ValueError::SizeTooLarge { .. })),
                "{big:?}"
            );
        }
    }
}
