//! RFC 3339 timestamps: made from the request clock (the only clock a plugin has), and checked
//! the way Go's `time.Parse(time.RFC3339, …)` reads them.

/// `2026-12-03T02:00:00Z` for unix seconds.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Whether Go's `time.Parse(time.RFC3339, s)` accepts `s`: `2006-01-02T15:04:05Z`, with an
/// optional fraction of a second and a `Z` or `±hh:mm` zone.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let d = b.get(r)?;
        d.iter()
            .all(u8::is_ascii_digit)
            .then(|| d.iter().fold(0, |n, c| n * 10 + u32::from(c - b'0')))
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let fields = [(0, 4), (5, 7), (8, 10), (11, 13), (14, 16), (17, 19)].map(|(a, z)| num(a..z));
    let [Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(se)] = fields else {
        return false;
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [
        31,
        28 + u32::from(leap),
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let seps = at(4, b'-') && at(7, b'-') && at(10, b'T') && at(13, b':') && at(16, b':');
    if !seps || !(1..=12).contains(&mo) || d == 0 || d > month_days[mo as usize - 1] {
        return false;
    }
    if h > 23 || mi > 59 || se > 59 {
        return false;
    }
    let mut i = 19;
    if at(i, b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    let zone = &b[i..];
    zone == b"Z"
        || (zone.len() == 6
            && (zone[0] == b'+' || zone[0] == b'-')
            && num(i + 1..i + 3).is_some_and(|h| h < 24)
            && at(i + 3, b':')
            && num(i + 4..i + 6).is_some_and(|m| m < 60))
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn rfc3339_as_go_parses_it() {
        for ok in [
            "2020-01-01T00:00:00Z",
            "2020-02-29T23:59:59.123456789Z",
            "2019-12-31T10:00:00+02:00",
            "2019-12-31T10:00:00-07:30",
        ] {
            assert!(super::is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "2020-01-01",
            "2020-01-01 00:00:00Z",
            "2020-01-01t00:00:00z",
            "2019-02-29T00:00:00Z",
            "2020-13-01T00:00:00Z",
            "2020-01-01T24:00:00Z",
            "2020-01-01T00:00:00",
            "2020-01-01T00:00:00.Z",
            "2020-01-01T00:00:00+0200",
            "2020-01-01T00:00:00Zjunk",
            "２020-01-01T00:00:00Z",
        ] {
            assert!(!super::is_rfc3339(bad), "{bad}");
        }
    }
}
