//! Numbered placeholders (`$1, $2, …`) for statements built with a number of rows; both backends
//! take this form.

/// `$from, $from+1, …`: `n` numbered placeholders.
pub(super) fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|k| format!("${k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($1, $2, $3), ($4, $5, $6), …`: `rows` tuples of `cols` numbered placeholders.
pub(super) fn values(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", placeholders(r * cols + 1, cols)))
        .collect::<Vec<_>>()
        .join(", ")
}
