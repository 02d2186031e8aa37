//! Kubernetes resource quantities (`10M`, `1.5Gi`, `2e6`), as the
//! `kubernetes.io/{ingress,egress}-bandwidth` pod annotations write them.
//!
//! Hand-written: no maintained Rust crate parses the Kubernetes quantity
//! grammar, and the subset needed here (a non-negative value rounded up to
//! an integer, as `resource.Quantity.Value()` does) is small.
//!
//! Grammar (from k8s.io/apimachinery `resource.Quantity`):
//! `<sign>?<digits>(.<digits>)?<suffix>` where the suffix is a binary SI
//! suffix (`Ki Mi Gi Ti Pi Ei`), a decimal SI suffix (`n u m "" k M G T P E`)
//! or a decimal exponent (`e<int>` / `E<int>`).

/// Why a quantity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("not a quantity: {0}")]
    Syntax(&'static str),
    #[error("must not be negative")]
    Negative,
    #[error("too large")]
    TooLarge,
}

/// The value of `text`, rounded up to the next integer (`Quantity.Value()`).
pub fn parse_quantity(text: &str) -> Result<u64, QuantityError> {
    let s = text.trim();
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let number_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_len);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(QuantityError::Syntax("no digits"));
    }
    if frac_part.contains('.') {
        return Err(QuantityError::Syntax("more than one decimal point"));
    }
    let (pow2, suffix_pow10) = parse_suffix(suffix)?;

    // The digits as one integer mantissa; trailing fraction zeros add nothing.
    let frac_part = frac_part.trim_end_matches('0');
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(0);
    }
    if negative {
        return Err(QuantityError::Negative);
    }
    if digits.len() > 38 {
        return Err(QuantityError::TooLarge);
    }
    let mantissa: u128 = digits
        .parse()
        .map_err(|_| QuantityError::Syntax("bad digits"))?;
    let frac_len = i64::try_from(frac_part.len()).map_err(|_| QuantityError::TooLarge)?;
    let pow10 = suffix_pow10 - frac_len;

    let scaled = mantissa
        .checked_mul(1u128 << pow2)
        .ok_or(QuantityError::TooLarge)?;
    let value = if pow10 >= 0 {
        let factor = u32::try_from(pow10)
            .ok()
            .and_then(|p| 10u128.checked_pow(p))
            .ok_or(QuantityError::TooLarge)?;
        scaled.checked_mul(factor).ok_or(QuantityError::TooLarge)?
    } else {
        match u32::try_from(-pow10)
            .ok()
            .and_then(|p| 10u128.checked_pow(p))
        {
            Some(divisor) => scaled.div_ceil(divisor),
            // Smaller than any integer but not zero: rounds up to one.
            None => 1,
        }
    };
    u64::try_from(value).map_err(|_| QuantityError::TooLarge)
}

/// (power of two, power of ten) of a suffix.
fn parse_suffix(suffix: &str) -> Result<(u32, i64), QuantityError> {
    let known = match suffix {
        "" => Some((0, 0)),
        "n" => Some((0, -9)),
        "u" => Some((0, -6)),
        "m" => Some((0, -3)),
        "k" => Some((0, 3)),
        "M" => Some((0, 6)),
        "G" => Some((0, 9)),
        "T" => Some((0, 12)),
        "P" => Some((0, 15)),
        "E" => Some((0, 18)),
        "Ki" => Some((10, 0)),
        "Mi" => Some((20, 0)),
        "Gi" => Some((30, 0)),
        "Ti" => Some((40, 0)),
        "Pi" => Some((50, 0)),
        "Ei" => Some((60, 0)),
        _ => None,
    };
    if let Some(k) = known {
        return Ok(k);
    }
    let exponent = suffix
        .strip_prefix('e')
        .or_else(|| suffix.strip_prefix('E'))
        .ok_or(QuantityError::Syntax("unknown suffix"))?;
    let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuantityError::Syntax("bad exponent"));
    }
    let exp: i64 = exponent
        .parse()
        .map_err(|_| QuantityError::Syntax("exponent out of range"))?;
    if exp.abs() > 1000 {
        return Err(QuantityError::Syntax("exponent out of range"));
    }
    Ok((0, exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_and_binary_suffixes() {
        assert_eq!(parse_quantity("10M"), Ok(10_000_000));
        assert_eq!(parse_quantity("1k"), Ok(1000));
        assert_eq!(parse_quantity("1Ki"), Ok(1024));
        assert_eq!(parse_quantity("2Mi"), Ok(2 * 1024 * 1024));
        assert_eq!(parse_quantity("1G"), Ok(1_000_000_000));
        assert_eq!(parse_quantity("1P"), Ok(1_000_000_000_000_000));
        assert_eq!(parse_quantity("3E"), Ok(3_000_000_000_000_000_000));
        assert_eq!(parse_quantity("123"), Ok(123));
        assert_eq!(parse_quantity("+5k"), Ok(5000));
    }

    #[test]
    fn fractions_and_exponents() {
        assert_eq!(parse_quantity("1.5M"), Ok(1_500_000));
        assert_eq!(parse_quantity(".5k"), Ok(500));
        assert_eq!(parse_quantity("2.k"), Ok(2000));
        assert_eq!(parse_quantity("1.5Ki"), Ok(1536));
        assert_eq!(parse_quantity("2e6"), Ok(2_000_000));
        assert_eq!(parse_quantity("2E3"), Ok(2000));
        assert_eq!(parse_quantity("25e-1"), Ok(3), "rounded up");
        assert_eq!(parse_quantity("1500m"), Ok(2), "rounded up");
        assert_eq!(parse_quantity("1n"), Ok(1));
        assert_eq!(parse_quantity("0"), Ok(0));
        assert_eq!(parse_quantity("0.000k"), Ok(0));
        assert_eq!(parse_quantity("100.000M"), Ok(100_000_000));
    }

    #[test]
    fn bad_quantities() {
        assert!(matches!(parse_quantity(""), Err(QuantityError::Syntax(_))));
        assert!(matches!(parse_quantity("M"), Err(QuantityError::Syntax(_))));
        assert!(matches!(
            parse_quantity("10 M"),
            Err(QuantityError::Syntax(_))
        ));
        assert!(matches!(
            parse_quantity("10MB"),
            Err(QuantityError::Syntax(_))
        ));
        assert!(matches!(
            parse_quantity("1.2.3"),
            Err(QuantityError::Syntax(_))
        ));
        assert!(matches!(
            parse_quantity("1e"),
            Err(QuantityError::Syntax(_))
        ));
        assert!(matches!(
            parse_quantity("ten"),
            Err(QuantityError::Syntax(_))
        ));
        assert_eq!(parse_quantity("-1M"), Err(QuantityError::Negative));
        assert_eq!(parse_quantity("100E"), Err(QuantityError::TooLarge));
        assert_eq!(parse_quantity("1e400"), Err(QuantityError::TooLarge));
    }
}
