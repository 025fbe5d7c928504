//! JavaScript's Number → String (ECMAScript `Number::toString(x)` in radix 10, §6.1.6.1.20):
//! what `JSON.stringify` writes for a number, so what Parse Server, on Node, echoes for a
//! requestId. The digits are Rust's shortest round-trip digits (`{:e}`: the fewest digits that
//! read back as `x`, the closest to `x` of those), except at an exact tie between two such
//! candidates, where JavaScript takes the even one and Rust rounds up. Only their layout is
//! JavaScript's own: plain digits for `1e-6 <= |x| < 1e21`, else `d.ddde±n`.

/// The text `JSON.stringify(x)` writes: `0` for both zeros, `null` when not finite.
pub(super) fn js_number(x: f64) -> String {
    if !x.is_finite() {
        return "null".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let (digits, n) = shortest(x.abs());
    let sign = if x < 0.0 { "-" } else { "" };
    format!("{sign}{}", layout(&digits, n))
}

/// The spec's `s` (as its `k` decimal digits) and `n` for a positive finite `x`: the fewest
/// digits with `x = s × 10^(n - k)`, the closest to `x` of those, the even one of two as close.
fn shortest(x: f64) -> (String, i32) {
    let (mut digits, exponent) = scientific(&format!("{x:e}"));
    // The shortest form has no trailing zeros; trimmed anyway, as the spec's k is minimal.
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    let n = exponent + 1;
    (even_at_tie(x, digits, n), n)
}

/// The digits and exponent of Rust's `d[.ddd]e<exponent>` (no `+` on the exponent).
fn scientific(text: &str) -> (String, i32) {
    let (mantissa, exponent) = text.split_once('e').unwrap_or((text, "0"));
    (mantissa.chars().filter(char::is_ascii_digit).collect(), exponent.parse().unwrap_or(0))
}

/// When `x` lies exactly halfway between two shortest candidates (`196880244311067.625`: `.62`
/// or `.63`), Rust rounds up; JavaScript takes the even one (the spec's note on step 5, as V8
/// does). A tie needs `x` to have exactly `k + 1` significant digits ending in 5, which its
/// exact expansion (a double has at most 767 significant digits) shows.
fn even_at_tie(x: f64, digits: String, n: i32) -> String {
    let k = digits.len();
    let (mut exact, exponent) = scientific(&format!("{x:.800e}"));
    while exact.len() > 1 && exact.ends_with('0') {
        exact.pop();
    }
    if exact.len() != k + 1 || !exact.ends_with('5') || exponent + 1 != n {
        return digits;
    }
    let mut even: Vec<u8> = exact.as_bytes()[..k].to_vec();
    match even.last_mut() {
        Some(last) if (*last - b'0').is_multiple_of(2) => {}
        Some(last) if *last < b'9' => *last += 1,
        _ => return digits,
    }
    let even = String::from_utf8(even).unwrap_or_default();
    let reads_back = format!("{even}e{}", n - k as i32).parse::<f64>().is_ok_and(|y| y == x);
    if reads_back {
        even
    } else {
        digits
    }
}

/// Steps 6 to 10 of the spec: digits `s` (k of them) scaled by `10^(n - k)`.
fn layout(s: &str, n: i32) -> String {
    let k = s.len() as i32;
    if k <= n && n <= 21 {
        return format!("{s}{}", "0".repeat((n - k) as usize));
    }
    if 0 < n && n <= 21 {
        let (int, frac) = s.split_at(n as usize);
        return format!("{int}.{frac}");
    }
    if -6 < n && n <= 0 {
        return format!("0.{}{s}", "0".repeat((-n) as usize));
    }
    let e = n - 1;
    let sign = if e < 0 { '-' } else { '+' };
    let (first, rest) = s.split_at(1);
    let point = if rest.is_empty() { "" } else { "." };
    format!("{first}{point}{rest}e{sign}{}", e.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value and what Node prints for it (`JSON.stringify(x)`), checked with Node 18+.
    #[test]
    fn prints_numbers_as_javascript_does() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.0, "-1"),
            (1.5, "1.5"),
            (-1.5, "-1.5"),
            (0.1, "0.1"),
            (0.1 + 0.2, "0.30000000000000004"),
            (123.456, "123.456"),
            (1e15, "1000000000000000"),
            (9007199254740993.0, "9007199254740992"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
            (-1e21, "-1e+21"),
            (1.2345678901234568e38, "1.2345678901234568e+38"),
            (1e300, "1e+300"),
            (f64::MAX, "1.7976931348623157e+308"),
            (1e-6, "0.000001"),
            (1.5e-6, "0.0000015"),
            (0.000123, "0.000123"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (1.2e-7, "1.2e-7"),
            (5e-7, "5e-7"),
            (-5e-7, "-5e-7"),
            (1.23e-18, "1.23e-18"),
            (5e-324, "5e-324"),
            (2.2250738585072014e-308, "2.2250738585072014e-308"),
            (100.0, "100"),
            (1234.5678, "1234.5678"),
            (0.5, "0.5"),
            (4.35, "4.35"),
            // Halfway between two shortest candidates: the even one.
            (196880244311067.0 + 0.625, "196880244311067.62"),
            (-954308723871.0 - 0.03125, "-954308723871.0312"),
            (f64::INFINITY, "null"),
            (f64::NAN, "null"),
        ];
        for &(x, text) in cases {
            assert_eq!(js_number(x), text, "{x:e}");
        }
    }

    #[test]
    fn printed_numbers_read_back_exactly() {
        let mut rng = crate::testing::Rng::new(7);
        for _ in 0..20_000 {
            let x = f64::from_bits(rng.next());
            if !x.is_finite() {
                continue;
            }
            let text = js_number(x);
            let back: f64 = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(back == x, "{x:e} printed {text}");
            let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(value.is_number(), "{text} is JSON");
        }
    }
}
