//! Kubernetes resource quantities (`100m`, `1.5`, `128Mi`, `2G`, `1e3`).

/// Parses a quantity into thousandths of its unit: `"100m"` → 100,
/// `"2"` → 2000, `"1Ki"` → 1_024_000. Thousandths keep CPU millicores exact
/// and leave room for memory in bytes up to exabytes.
pub fn parse_milli(q: &str) -> Result<i128, String> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    if number.is_empty() || number == "+" || number == "-" {
        return Err(format!("quantity {q:?} has no number"));
    }
    let (mult_num, mult_den): (i128, i128) = match suffix {
        "" => (1, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1_000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().map_err(|_| format!("quantity {q:?} has a bad exponent"))?;
            if exp > 18 {
                return Err(format!("quantity {q:?} is too large"));
            }
            (10i128.pow(exp), 1)
        }
        _ => return Err(format!("quantity {q:?} has an unknown suffix {suffix:?}")),
    };
    let (negative, digits) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number.trim_start_matches('+')),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if !int_part.chars().chain(frac_part.chars()).all(|c| c.is_ascii_digit())
        || (int_part.is_empty() && frac_part.is_empty())
    {
        return Err(format!("quantity {q:?} is not a number"));
    }
    if int_part.len() + frac_part.len() > 24 {
        return Err(format!("quantity {q:?} has too many digits"));
    }
    let scale = 10i128.pow(frac_part.len() as u32);
    let mantissa: i128 = format!("{int_part}{frac_part}").parse().unwrap_or(0);
    // value * 1000 = mantissa / scale * mult_num / mult_den * 1000, rounded up
    // as Kubernetes rounds fractional units up.
    let num = mantissa
        .checked_mul(mult_num)
        .and_then(|v| v.checked_mul(1000))
        .ok_or_else(|| format!("quantity {q:?} is too large"))?;
    let den = scale * mult_den;
    // Rounded up without `num + den - 1`, which overflows near i128::MAX.
    let value = num / den + i128::from(num % den != 0);
    Ok(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::parse_milli;

    #[test]
    fn parses_cpu_and_memory() {
        assert_eq!(parse_milli("100m"), Ok(100));
        assert_eq!(parse_milli("2"), Ok(2000));
        assert_eq!(parse_milli("1.5"), Ok(1500));
        assert_eq!(parse_milli("1Ki"), Ok(1_024_000));
        assert_eq!(parse_milli("128Mi"), Ok(128 * 1024 * 1024 * 1000));
        assert_eq!(parse_milli("1G"), Ok(1_000_000_000_000));
        assert_eq!(parse_milli("1e3"), Ok(1_000_000));
        assert_eq!(parse_milli("-1"), Ok(-1000));
        // Once an overflow rounding up: its thousandths fall 3e14 short of
        // i128::MAX, and its 15 decimals make the divisor 1e15.
        assert_eq!(parse_milli("170141183.460469231731687e12"), Ok(170_141_183_460_469_231_731_687));
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "abc", "1Zi", "1.2.3", "--1", "m", "1e99", "99999999999999999999999E"] {
            assert!(parse_milli(bad).is_err(), "{bad} should fail");
        }
    }
}
