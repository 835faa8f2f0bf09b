//! Inlining the template's `<style>` rules into `style=""` attributes, once per campaign.
//!
//! Inlining runs on the *template*, not on each rendered message, so the Handlebars expressions have to
//! survive an HTML parser. Expressions in text position become `<!--hbs:N-->` comments (a comment stays
//! where it is even between table rows, where text would be moved out of the table); expressions inside
//! quoted attribute values pass through untouched. Anything that cannot be protected that way (an
//! expression inside `<style>`, `<title>` or between attributes, or a partial we cannot flatten) keeps the
//! template as written: the message still renders, with its `<style>` block instead of inline styles,
//! and [`NotInlined`] says why. A table's implied `<tbody>` is written out first ([`explicit_tbody`]),
//! so the common table layout — blocks between rows — is not such a case.

use std::collections::BTreeMap;

const MAX_DEPTH: usize = 8;
/// The HTML parser and serializer under the inliner recurse once per element level and overflow a
/// thread's stack a few thousand levels down; real layouts nest a few dozen.
const MAX_ELEMENT_DEPTH: usize = 500;

/// Why a template's CSS was left in its `<style>` block: said in a preview's warnings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotInlined {
    #[error("the HTML has no <style> block")]
    NoStyle,
    #[error("a partial or layout could not be followed into the template (missing, named by an expression, or nested over {MAX_DEPTH} deep)")]
    Partial,
    #[error("elements nest over {MAX_ELEMENT_DEPTH} deep")]
    TooDeep,
    #[error("a Handlebars expression stands where an HTML parser cannot keep it: inside <style> or <title>, or between a tag's attributes")]
    Expression,
    #[error("the CSS inliner refused the HTML: {0}")]
    Inliner(String),
    #[error("an HTML parser would move an element across a Handlebars block (an implied <tbody>, text between table rows), so inlining would change what a loop or condition wraps")]
    Restructured,
}

/// The template with its CSS inlined, or why it should be used as written.
pub(crate) fn inline_template(
    html: &str,
    partials: &BTreeMap<String, String>,
) -> Result<String, NotInlined> {
    let flat = flatten(html, partials, 0).ok_or(NotInlined::Partial)?;
    if !flat.contains("<style") {
        return Err(NotInlined::NoStyle);
    }
    if flat.contains("{{>") || flat.contains("{{#>") {
        return Err(NotInlined::Partial);
    }
    if element_depth(&flat) > MAX_ELEMENT_DEPTH {
        return Err(NotInlined::TooDeep);
    }
    let (protected, exprs) = protect(&flat).ok_or(NotInlined::Expression)?;
    let protected = explicit_tbody(&protected);
    let inliner = css_inline::CSSInliner::options()
        .keep_at_rules(true)
        .build();
    let inlined = inliner
        .inline(&protected)
        .map_err(|e| NotInlined::Inliner(e.to_string()))?;
    // A parser repairs HTML: it inserts `<tbody>`, moves stray text out of tables. Any such repair
    // around a block expression changes what the loop or condition wraps, so the inlined template is
    // used only if its elements and expressions stand in the same order as before.
    if skeleton(&inlined) != skeleton(&protected) {
        return Err(NotInlined::Restructured);
    }
    restore(&inlined, &exprs).ok_or(NotInlined::Restructured)
}

/// Writes out the `<tbody>` an HTML parser would add to a table whose rows stand directly in it.
/// The parser opens it at the first row, which in a template is often inside a loop or a
/// condition (`<table>{{#each}}<tr>…`): the block would then wrap the section's start and not its
/// end, so such a template could not be inlined. Opened right after the table's start tag (and any
/// `<caption>`, `<colgroup>` or `<col>`) and closed before its end tag, the section wraps every block
/// between the rows, and the template means what it did: every browser reads it with that `<tbody>`.
fn explicit_tbody(html: &str) -> String {
    struct Table {
        /// Where the section may open: after the start tag and the caption and column groups.
        open_at: usize,
        has_section: bool,
        has_row: bool,
    }
    let mut tables: Vec<Table> = Vec::new();
    let mut inserts: Vec<(usize, &str)> = Vec::new();
    let bytes = html.as_bytes();
    let mut i = 0;
    while let Some(off) = html[i..].find('<') {
        let start = i + off;
        let rest = &html[start + 1..];
        if rest.starts_with("!--") {
            i = rest.find("-->").map_or(html.len(), |c| start + 1 + c + 3);
            continue;
        }
        let closing = rest.starts_with('/');
        let name_at = start + 1 + usize::from(closing);
        let name_len = html[name_at..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(html.len() - name_at);
        let name = html[name_at..name_at + name_len].to_ascii_lowercase();
        if name.is_empty() {
            i = start + 1;
            continue;
        }
        // The tag's end: the first `>` outside a quoted attribute value.
        let mut end = name_at + name_len;
        let mut quote = None;
        while end < bytes.len() {
            match (quote, bytes[end]) {
                (None, b'>') => break,
                (None, q @ (b'"' | b'\'')) => quote = Some(q),
                (Some(q), b) if b == q => quote = None,
                _ => {}
            }
            end += 1;
        }
        let after = (end + 1).min(html.len());
        match (closing, name.as_str()) {
            (false, "table") => tables.push(Table {
                open_at: after,
                has_section: false,
                has_row: false,
            }),
            (false, "tbody" | "thead" | "tfoot") => {
                if let Some(t) = tables.last_mut() {
                    t.has_section = true;
                }
            }
            (false, "tr") => {
                if let Some(t) = tables.last_mut() {
                    t.has_row = true;
                }
            }
            (false, "col") | (true, "caption" | "colgroup") => {
                if let Some(t) = tables.last_mut().filter(|t| !t.has_row) {
                    t.open_at = after;
                }
            }
            (true, "table") => {
                if let Some(t) = tables.pop().filter(|t| t.has_row && !t.has_section) {
                    inserts.push((t.open_at, "<tbody>"));
                    inserts.push((start, "</tbody>"));
                }
            }
            (false, "style" | "script" | "title" | "textarea") => {
                // Raw text: nothing in it is a tag, up to its end tag (in any case).
                i = html[after..]
                    .match_indices("</")
                    .map(|(c, _)| after + c)
                    .find(|&c| {
                        html.as_bytes()[c + 2..]
                            .get(..name.len())
                            .is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
                    })
                    .unwrap_or(html.len());
                continue;
            }
            _ => {}
        }
        i = after;
    }
    inserts.sort_by_key(|(at, _)| *at);
    let mut out = String::with_capacity(html.len() + inserts.len() * 8);
    let mut copied = 0;
    for (at, text) in inserts {
        out.push_str(&html[copied..at]);
        out.push_str(text);
        copied = at;
    }
    out.push_str(&html[copied..]);
    out
}

/// An upper bound on how deep elements nest: start tags less end tags, void and self-closed
/// elements aside. Elements whose end tag may be left out (`<p>`, `<li>`) count as open, so this
/// errs on the deep side, which only costs an inlining.
fn element_depth(html: &str) -> usize {
    const VOID: &[&str] = &[
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
        "source", "track", "wbr",
    ];
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let closing = rest.starts_with('/');
        let name_start = usize::from(closing);
        let len = rest[name_start..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len() - name_start);
        let name = &rest[name_start..name_start + len];
        if name.is_empty() {
            continue;
        }
        if closing {
            depth = depth.saturating_sub(1);
            continue;
        }
        let self_closed = rest.find('>').is_some_and(|end| rest[..end].ends_with('/'));
        if !self_closed && !VOID.iter().any(|v| name.eq_ignore_ascii_case(v)) {
            depth += 1;
            deepest = deepest.max(depth);
        }
    }
    deepest
}

/// Start tags (less the ones a parser adds and the inliner removes) and expression placeholders, in order.
fn skeleton(html: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        if let Some(n) = rest.strip_prefix("!--hbs:") {
            out.push(&n[..n.find("-->").unwrap_or(n.len())]);
            continue;
        }
        let len = rest
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len());
        let name = &rest[..len];
        if !name.is_empty()
            && !["html", "head", "body", "style", "link"]
                .iter()
                .any(|t| name.eq_ignore_ascii_case(t))
        {
            out.push(name);
        }
    }
    out
}

/// Expands layouts (`{{#> layouts/x}}…{{/layouts/x}}` around `{{> @partial-block}}`) and parameterless
/// partials (`{{> name}}`) textually, so that rules in a layout's `<style>` reach elements in the body.
fn flatten(src: &str, partials: &BTreeMap<String, String>, depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail.find("}}")? + 2;
        let tag = &tail[..end];
        let inner = tag[2..tag.len() - 2].trim();
        if let Some(name) = inner.strip_prefix("#>") {
            let name = name.trim();
            let layout = partials.get(name)?;
            let close = format!("{{{{/{name}}}}}");
            let body_end = tail[end..].find(&close)?;
            let body = &tail[end..end + body_end];
            let body = flatten(body, partials, depth + 1)?;
            let expanded = layout.replace("{{> @partial-block}}", &body);
            out.push_str(&flatten(&expanded, partials, depth + 1)?);
            rest = &tail[end + body_end + close.len()..];
        } else if let Some(name) = inner.strip_prefix('>') {
            let name = name.trim();
            match partials.get(name) {
                // Only a bare name is safe to paste in: a partial called with a context or hash
                // arguments sees other data than its caller.
                Some(body) if !name.contains(' ') => {
                    out.push_str(&flatten(body, partials, depth + 1)?);
                }
                _ => out.push_str(tag),
            }
            rest = &tail[end..];
        } else {
            out.push_str(tag);
            rest = &tail[end..];
        }
    }
    out.push_str(rest);
    Some(out)
}

#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    Text,
    Tag,
    Quoted(u8),
    RawText, // inside <style>, <script> or <title>: an expression here cannot be protected
}

/// Replaces each expression in text position by a numbered comment; returns the expressions in order.
fn protect(src: &str) -> Option<(String, Vec<String>)> {
    let bytes = src.as_bytes();
    let mut out = String::with_capacity(src.len() + 64);
    let mut exprs = Vec::new();
    let mut ctx = Ctx::Text;
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"{{") {
            let end = expression_end(&src[i..])? + i;
            match ctx {
                Ctx::Text => {
                    out.push_str(&src[copied..i]);
                    out.push_str(&format!("<!--hbs:{}-->", exprs.len()));
                    exprs.push(src[i..end].to_string());
                    copied = end;
                }
                Ctx::Quoted(_) => {}
                Ctx::Tag | Ctx::RawText => return None,
            }
            i = end;
            continue;
        }
        let b = bytes[i];
        ctx = match ctx {
            Ctx::Text if b == b'<' => {
                let rest = &src[i + 1..];
                if rest.starts_with("!--") {
                    // Skip the user's own comments whole.
                    let close = rest.find("-->")? + 3;
                    i += 1 + close;
                    continue;
                }
                if raw_text_element(rest) {
                    Ctx::RawText
                } else if rest
                    .starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '!')
                {
                    Ctx::Tag
                } else {
                    Ctx::Text
                }
            }
            Ctx::Tag if b == b'>' => Ctx::Text,
            Ctx::Tag if b == b'"' || b == b'\'' => Ctx::Quoted(b),
            Ctx::Quoted(q) if b == q => Ctx::Tag,
            Ctx::RawText if b == b'<' && src[i + 1..].starts_with('/') => {
                if raw_text_element(&src[i + 2..]) {
                    Ctx::Tag
                } else {
                    Ctx::RawText
                }
            }
            other => other,
        };
        i += 1;
    }
    out.push_str(&src[copied..]);
    Some((out, exprs))
}

fn raw_text_element(rest: &str) -> bool {
    let rest = rest.as_bytes();
    ["style", "script", "title", "textarea"].iter().any(|t| {
        rest.len() > t.len()
            && rest[..t.len()].eq_ignore_ascii_case(t.as_bytes())
            && (rest[t.len()] == b'>' || rest[t.len()].is_ascii_whitespace())
    })
}

fn expression_end(s: &str) -> Option<usize> {
    let close = if s.starts_with("{{!--") {
        "--}}"
    } else if s.starts_with("{{{") {
        "}}}"
    } else {
        "}}"
    };
    Some(s[2..].find(close)? + 2 + close.len())
}

fn restore(inlined: &str, exprs: &[String]) -> Option<String> {
    let mut out =
        String::with_capacity(inlined.len() + exprs.iter().map(String::len).sum::<usize>());
    let mut rest = inlined;
    let mut next = 0;
    while let Some(i) = rest.find("<!--hbs:") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 8..];
        let close = tail.find("-->")?;
        let n: usize = tail[..close].parse().ok()?;
        // The parser must keep every expression, once, in its original order.
        if n != next {
            return None;
        }
        out.push_str(&exprs[n]);
        next += 1;
        rest = &tail[close + 3..];
    }
    out.push_str(rest);
    (next == exprs.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_partials() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn rules_are_inlined_and_expressions_survive_in_tables() {
        let html = r#"<html><head><style>td.a { color: red } @media (max-width: 600px) { td.a { color: blue } }</style></head>
<body><table><tbody>{{#each articles}}<tr><td class="a"><a href="{{url}}">{{title}}</a></td></tr>{{/each}}</tbody></table></body></html>"#;
        let out = inline_template(html, &no_partials()).unwrap();
        assert!(
            out.contains(r#"<td class="a" style="color: red;">"#),
            "{out}"
        );
        assert!(out.contains("{{#each articles}}<tr>"), "{out}");
        assert!(out.contains("</tr>{{/each}}</tbody></table>"), "{out}");
        assert!(out.contains(r#"href="{{url}}""#), "{out}");
        assert!(
            out.contains("@media"),
            "media queries stay for responsive clients: {out}"
        );
    }

    #[test]
    fn a_parser_repair_around_a_block_keeps_the_template_as_written() {
        // A <div> among a table's rows is moved before the table by any HTML parser: what the
        // condition wraps would change, so the template stays as written, and says why.
        let html = "<style>td { color: red }</style><table><tbody><tr><td>x</td></tr></tbody>{{#if y}}<div>{{y}}</div>{{/if}}</table>";
        assert_eq!(
            inline_template(html, &no_partials()),
            Err(NotInlined::Restructured)
        );
    }

    #[test]
    fn rows_straight_in_a_table_get_the_tbody_a_browser_reads_and_are_inlined() {
        // The parser would open <tbody> at the first row, inside the loop: written out after the
        // table's start tag (and its caption), every block between rows stays whole.
        let html = "<style>td { color: red } .f { color: gray }</style>\
            <table><caption>c</caption>{{#each rows}}<tr><td>{{this}}</td></tr>{{/each}}\
            {{#if more}}<tr><td>more</td></tr>{{/if}}<tr><td class=\"f\">footer</td></tr></table>\
            <table><tr><td><table>{{#each inner}}<tr><td>{{@index}}</td></tr>{{/each}}</table></td></tr></table>";
        let out = inline_template(html, &no_partials()).unwrap();
        assert!(
            out.contains("<table><caption>c</caption><tbody>{{#each rows}}<tr><td style=\"color: red;\">{{this}}</td></tr>{{/each}}"),
            "{out}"
        );
        assert!(
            out.contains("{{#if more}}<tr><td style=\"color: red;\">more</td></tr>{{/if}}<tr><td class=\"f\" style=\"color: gray;\">footer</td></tr></tbody></table>"),
            "{out}"
        );
        assert!(
            out.contains("<table><tbody>{{#each inner}}<tr><td style=\"color: red;\">{{@index}}</td></tr>{{/each}}</tbody></table></td></tr></tbody></table>"),
            "{out}"
        );
    }

    #[test]
    fn a_layout_is_flattened_so_its_rules_reach_the_body() {
        let mut partials = BTreeMap::new();
        partials.insert(
            "layouts/base".to_string(),
            "<html><head><style>p { margin: 0 }</style></head><body>{{> @partial-block}}</body></html>".to_string(),
        );
        partials.insert("sig".to_string(), "<p>bye</p>".to_string());
        let out = inline_template(
            "{{#> layouts/base}}<p>hi {{name}}</p>{{> sig}}{{/layouts/base}}",
            &partials,
        )
        .unwrap();
        assert!(
            out.contains(r#"<p style="margin: 0;">hi {{name}}</p><p style="margin: 0;">bye</p>"#),
            "{out}"
        );
    }

    #[test]
    fn unprotectable_expressions_keep_the_template_as_written() {
        for (html, why) in [
            (
                "<style>p { color: {{color}} }</style><p>x</p>",
                NotInlined::Expression,
            ),
            (
                "<style>p{}</style><p {{attrs}}>x</p>",
                NotInlined::Expression,
            ),
            (
                "<title>{{subject}}</title><style>p{}</style><p>x</p>",
                NotInlined::Expression,
            ),
            ("<style>p{}</style>{{> card this}}", NotInlined::Partial),
        ] {
            assert_eq!(inline_template(html, &no_partials()), Err(why), "{html}");
        }
    }

    #[test]
    fn non_ascii_after_angle_brackets_does_not_break_the_scanner() {
        let html = "<style>p { color: red }</style><p>a</p>· Straße <· {{x}} </· ünïcödé<";
        let out = inline_template(html, &no_partials()).unwrap();
        assert!(out.contains("{{x}}"), "{out}");
    }

    #[test]
    fn a_table_inside_raw_text_is_no_table() {
        let html =
            "<style>td { color: red } /* <table><tr> */</STYLE><table><tr><td>x</td></tr></table>";
        assert_eq!(
            explicit_tbody(html),
            "<style>td { color: red } /* <table><tr> */</STYLE><table><tbody><tr><td>x</td></tr></tbody></table>"
        );
        // Each raw-text element is read once: many of them cost their length, no more.
        let many = "<style></style>".repeat(20_000) + "<table><tr><td>x</td></tr></table>";
        assert_eq!(explicit_tbody(&many).matches("<tbody>").count(), 1);
    }

    #[test]
    fn templates_without_style_are_left_alone() {
        assert_eq!(
            inline_template("<p>{{x}}</p>", &no_partials()),
            Err(NotInlined::NoStyle)
        );
    }
}
