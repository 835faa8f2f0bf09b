//! Numbers as handlebars.js prints them. Templates come from handlebars.js tools (SendGrid dynamic
//! templates and the like), where a price `3.0` in the data prints `3`: JavaScript has one number
//! type and prints it by `Number.prototype.toString`. serde_json keeps `3.0` a float and prints
//! `3.0`, so a recipient's data is normalized before it is rendered: a whole float becomes an
//! integer (same value, same comparisons) and the rare float whose JavaScript form differs from
//! serde_json's (`0.000001`, which serde_json prints `1e-6`) becomes that string. Integers beyond 2^53 stay exact, where
//! handlebars.js would round them.

use serde_json::Value;

/// The largest integer below which every whole f64 is exact as an `i64` and prints the same.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// Rewrites every float in `v` that would print other than in handlebars.js.
pub fn normalize(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            let Some(f) = n.as_f64() else { return };
            if f.fract() == 0.0 && f.abs() < EXACT {
                *v = Value::from(f as i64);
            } else {
                let js = to_string(f);
                if js != n.to_string() {
                    *v = Value::String(js);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        Value::Object(fields) => fields.values_mut().for_each(normalize),
        _ => {}
    }
}

/// ECMAScript's Number::toString(x) for a finite `x`: the shortest digits that read back as `x`,
/// in plain notation from 1e-6 up to 1e21 and in exponent notation outside.
pub fn to_string(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let sign = if x < 0.0 { "-" } else { "" };
    // Rust's `{:e}` gives the same shortest round-trip digits: `1.2345e4`, `3e0`, `1e-7`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i32;
    // The value is 0.DIGITS × 10^n.
    let n = exp.parse::<i32>().unwrap_or(0) + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        format!("{int}.{frac}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let e = if e >= 0 {
            format!("+{e}")
        } else {
            e.to_string()
        };
        match digits.split_at(1) {
            (first, "") => format!("{first}e{e}"),
            (first, rest) => format!("{first}.{rest}e{e}"),
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_print_as_javascript_prints_them() {
        // Each pair is ECMAScript's `String(x)`, as any JavaScript console shows it.
        for (x, js) in [
            (3.0, "3"),
            (2.5, "2.5"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (0.1 + 0.2, "0.30000000000000004"),
            (100.0, "100"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (1.23e-18, "1.23e-18"),
            (123456789.125, "123456789.125"),
            (9007199254740992.0, "9007199254740992"),
            (-0.0, "0"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
        ] {
            assert_eq!(to_string(x), js, "{x:e}");
        }
    }

    #[test]
    fn data_is_normalized_where_it_would_print_otherwise() {
        let mut v: Value = serde_json::from_str(
            r#"{"price": 3.0, "ratio": 2.50, "n": 7, "big": 12345678901234567890,
                "tiny": 0.000001, "huge": 1e21, "list": [1.0, {"deep": 10.0}], "s": "3.0"}"#,
        )
        .unwrap();
        normalize(&mut v);
        assert_eq!(
            v,
            json!({"price": 3, "ratio": 2.5, "n": 7, "big": 12345678901234567890u64,
                   "tiny": "0.000001", "huge": 1e21, "list": [1, {"deep": 10}], "s": "3.0"})
        );
        assert!(
            v["price"].is_i64(),
            "a whole float compares as the integer it is"
        );
    }
}
