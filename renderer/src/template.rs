//! Template sources, compilation (once per campaign) and per-recipient rendering.

use std::collections::BTreeMap;
use std::path::Path;

use handlebars::Handlebars;
use serde::{Deserialize, Serialize};

use crate::bounds::{self, RenderLimits, TemplateLimits};
use crate::css;

/// Everything a campaign needs to render, stored with the campaign so later edits of `templates/`
/// never change a campaign already accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateSource {
    pub subject: String,
    pub html: String,
    /// When absent, each recipient's text part is derived from its rendered HTML.
    pub text: Option<String>,
    /// Partials by name; layouts are registered as `layouts/NAME`.
    #[serde(default)]
    pub partials: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TemplateError {
    #[error("template name {0:?} is not valid (letters, digits, '-' and '_' only)")]
    BadName(String),
    #[error("no template named {0:?}")]
    NotFound(String),
    #[error("cannot read {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{part} line {line}, column {column}: {reason}")]
    Syntax {
        part: String,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("{part}: {reason}")]
    Invalid { part: String, reason: String },
    /// Recursive, too deeply nested, too wide or too large to render safely.
    #[error("{0}")]
    Unbounded(#[from] bounds::Refusal),
}

/// A recipient whose data does not fit the template. `part` is `subject`, `html`, `text` or a partial.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("{part}{}: {reason}", location(*line, *column))]
pub struct RenderError {
    pub part: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub reason: String,
    /// The missing field, when that is the problem.
    pub field: Option<String>,
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" line {l}, column {c}"),
        (Some(l), None) => format!(" line {l}"),
        _ => String::new(),
    }
}

/// The templates this project ships (`templates/` at the repository's root), compiled in: when the
/// templates folder does not exist (the binary started from another folder than the repository's,
/// or installed alone), named templates come from here, so the demo works from anywhere. A folder
/// that exists is read as it is, and only it.
const BUILT_IN: &[(&str, &str)] = &[
    (
        "newsletter/subject.hbs",
        include_str!("../../templates/newsletter/subject.hbs"),
    ),
    (
        "newsletter/html.hbs",
        include_str!("../../templates/newsletter/html.hbs"),
    ),
    (
        "newsletter/text.hbs",
        include_str!("../../templates/newsletter/text.hbs"),
    ),
    (
        "spring/subject.hbs",
        include_str!("../../templates/spring/subject.hbs"),
    ),
    (
        "spring/html.hbs",
        include_str!("../../templates/spring/html.hbs"),
    ),
    (
        "spring/text.hbs",
        include_str!("../../templates/spring/text.hbs"),
    ),
    (
        "partials/article.hbs",
        include_str!("../../templates/partials/article.hbs"),
    ),
    (
        "partials/footer.hbs",
        include_str!("../../templates/partials/footer.hbs"),
    ),
    (
        "layouts/email.hbs",
        include_str!("../../templates/layouts/email.hbs"),
    ),
];

#[derive(Debug, Clone, PartialEq)]
pub struct RenderedParts {
    pub subject: String,
    pub html: String,
    pub text: String,
}

impl TemplateSource {
    /// Reads `root/NAME/{subject,html,text}.hbs` plus the shared `root/partials/*.hbs` and
    /// `root/layouts/*.hbs`. `text.hbs` is optional.
    pub fn load_dir(root: &Path, name: &str) -> Result<Self, TemplateError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid || name == "partials" || name == "layouts" {
            return Err(TemplateError::BadName(name.to_string()));
        }
        if !root.is_dir() {
            return Self::built_in(name).ok_or_else(|| TemplateError::NotFound(name.to_string()));
        }
        let dir = root.join(name);
        if !dir.join("html.hbs").is_file() {
            return Err(TemplateError::NotFound(name.to_string()));
        }
        let subject = read(&dir.join("subject.hbs"))?.trim_end().to_string();
        let html = read(&dir.join("html.hbs"))?;
        let text_path = dir.join("text.hbs");
        let text = if text_path.is_file() {
            Some(read(&text_path)?)
        } else {
            None
        };
        Ok(Self {
            subject,
            html,
            text,
            partials: Self::load_partials(root)?,
        })
    }

    /// A template this project ships, as `load_dir` would read it from `templates/`.
    fn built_in(name: &str) -> Option<Self> {
        let file = |part: &str| {
            BUILT_IN
                .iter()
                .find(|(path, _)| *path == format!("{name}/{part}"))
                .map(|(_, body)| (*body).to_string())
        };
        let html = file("html.hbs")?;
        let partials = BUILT_IN
            .iter()
            .filter_map(|(path, body)| {
                let (sub, file) = path.split_once('/')?;
                let stem = file.strip_suffix(".hbs")?;
                match sub {
                    "partials" => Some((stem.to_string(), (*body).to_string())),
                    "layouts" => Some((format!("layouts/{stem}"), (*body).to_string())),
                    _ => None,
                }
            })
            .collect();
        Some(Self {
            subject: file("subject.hbs")
                .unwrap_or_default()
                .trim_end()
                .to_string(),
            html,
            text: file("text.hbs"),
            partials,
        })
    }

    /// The shared `root/partials/*.hbs` (as `NAME`) and `root/layouts/*.hbs` (as `layouts/NAME`);
    /// none when the folders do not exist.
    pub fn load_partials(root: &Path) -> Result<BTreeMap<String, String>, TemplateError> {
        let mut partials = BTreeMap::new();
        for (sub, prefix) in [("partials", ""), ("layouts", "layouts/")] {
            let Ok(entries) = std::fs::read_dir(root.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) != Some("hbs") {
                    continue;
                }
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    partials.insert(format!("{prefix}{stem}"), read(&path)?);
                }
            }
        }
        Ok(partials)
    }
}

fn read(path: &Path) -> Result<String, TemplateError> {
    std::fs::read_to_string(path).map_err(|e| TemplateError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Compiled once per campaign. The HTML registry escapes; the subject/text registry does not
/// (a subject is a header, not HTML, and escaping `&` there shows up as `&amp;` in inboxes).
pub struct CompiledTemplate {
    html: Handlebars<'static>,
    plain: Handlebars<'static>,
    has_text: bool,
    limits: RenderLimits,
    /// False when the CSS could not be inlined safely and the `<style>` block was kept as it was.
    pub css_inlined: bool,
    /// Why not, then.
    pub css_not_inlined: Option<css::NotInlined>,
}

impl std::fmt::Debug for CompiledTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledTemplate")
            .field("has_text", &self.has_text)
            .field("css_inlined", &self.css_inlined)
            .finish()
    }
}

impl CompiledTemplate {
    /// Compiles with the default render limits.
    pub fn compile(src: &TemplateSource) -> Result<Self, TemplateError> {
        Self::compile_with(src, RenderLimits::default())
    }

    /// Compiles, refusing what could not render within `limits` (recursive or exponential partials,
    /// nesting too deep, a template already over the message limit); every render then runs under them.
    pub fn compile_with(src: &TemplateSource, limits: RenderLimits) -> Result<Self, TemplateError> {
        let shape = TemplateLimits::default();
        let parts = [
            ("subject", Some(&src.subject)),
            ("html", Some(&src.html)),
            ("text", src.text.as_ref()),
        ];
        let partials = src.partials.iter().map(|(n, b)| (n.as_str(), Some(b)));
        for (part, body) in parts.into_iter().chain(partials) {
            let Some(body) = body else { continue };
            if body.len() > shape.max_source_bytes {
                return Err(bounds::Refusal::SourceTooLarge {
                    part: part.to_string(),
                    bytes: body.len(),
                    limit: shape.max_source_bytes,
                }
                .into());
            }
            bounds::check_nesting(part, body, shape.max_depth)?;
        }
        if src.subject.trim().is_empty() {
            return Err(TemplateError::Invalid {
                part: "subject".into(),
                reason: "the subject template is empty".into(),
            });
        }
        if src.html.trim().is_empty() {
            return Err(TemplateError::Invalid {
                part: "html".into(),
                reason: "the HTML template is empty".into(),
            });
        }
        let mut html = registry(true);
        let mut plain = registry(false);
        // Compile everything as written first, so syntax errors point at the user's own lines.
        for (name, body) in &src.partials {
            register(&mut html, name, body)?;
            register(&mut plain, name, body)?;
        }
        register(&mut html, "html", &src.html)?;
        register(&mut plain, "subject", &src.subject)?;
        if let Some(text) = &src.text {
            register(&mut plain, "text", text)?;
        }
        let max = limits.max_message_bytes;
        bounds::check(&html, &["html"], shape, max)?;
        bounds::check(&plain, &["subject", "text"], shape, max)?;
        // CSS is inlined once into the template, never per recipient.
        let inlined = css::inline_template(&src.html, &src.partials);
        let css_inlined = inlined.is_ok();
        let css_not_inlined = match inlined {
            Ok(inlined) => {
                register(&mut html, "html", &inlined)?;
                bounds::check(&html, &["html"], shape, max)?;
                None
            }
            Err(why) => Some(why),
        };
        Ok(Self {
            html,
            plain,
            has_text: src.text.is_some(),
            limits,
            css_inlined,
            css_not_inlined,
        })
    }

    /// Renders one recipient. `ctx` is the recipient's data object. A message over
    /// `max_message_bytes` or a render over `max_render_ms` is an error naming the limit.
    pub fn render(&self, ctx: serde_json::Value) -> Result<RenderedParts, RenderError> {
        self.bounded(ctx, true)
    }

    /// As [`render`](Self::render), for checking a list before it is accepted: the text part that
    /// would be derived from the HTML is left empty. Deriving it is most of a render's cost and it
    /// cannot fail; only its size can push a message over `max_message_bytes`. That size mostly
    /// follows the HTML's, so the caller renders its largest message whole; a smaller message whose
    /// derived text is unusually long (many long links) is caught only when it is rendered for
    /// sending, where it fails with the reason like any other render error.
    pub fn trial(&self, ctx: serde_json::Value) -> Result<RenderedParts, RenderError> {
        self.bounded(ctx, false)
    }

    fn bounded(
        &self,
        ctx: serde_json::Value,
        derive_text: bool,
    ) -> Result<RenderedParts, RenderError> {
        // One copy of the data for all parts: `render_to_write` converts its data into a new
        // context (a deep copy through serde) for every part it renders.
        let ctx = handlebars::Context::from(ctx);
        match bounds::within(self.limits, || self.render_with(&ctx, derive_text)) {
            Ok(parts) => parts,
            Err(limit) => Err(RenderError {
                part: "message".into(),
                line: None,
                column: None,
                reason: limit.to_string(),
                field: None,
            }),
        }
    }

    fn render_with(
        &self,
        ctx: &handlebars::Context,
        derive_text: bool,
    ) -> Result<RenderedParts, RenderError> {
        let mut left = self.limits.max_message_bytes;
        let mut part = |registry: &Handlebars<'static>, name: &str| {
            let mut out = bounds::BoundedWriter::new(left);
            registry
                .render_with_context_to_write(name, ctx, &mut out)
                .map_err(|e| render_error(name, e))?;
            left -= out.buf.len();
            // Handlebars writes whole `&str` segments, so the bytes are UTF-8.
            Ok::<_, RenderError>(
                String::from_utf8(out.buf)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            )
        };
        let subject = part(&self.plain, "subject")?;
        let html = part(&self.html, "html")?;
        let text = if self.has_text {
            part(&self.plain, "text")?
        } else if !derive_text {
            String::new()
        } else {
            let text = html_to_text(&html);
            if text.len() > left {
                return Err(RenderError {
                    part: "text".into(),
                    line: None,
                    column: None,
                    reason: bounds::Exceeded::Bytes(self.limits.max_message_bytes).to_string(),
                    field: None,
                });
            }
            text
        };
        Ok(RenderedParts {
            subject: subject.trim().to_string(),
            html,
            text,
        })
    }
}

fn registry(escape_html: bool) -> Handlebars<'static> {
    let mut h = Handlebars::new();
    h.set_strict_mode(true);
    h.set_prevent_indent(true);
    h.register_escape_fn(bounds::counting_escape(escape_html));
    h.register_helper("each", Box::new(bounds::BoundedEach));
    h
}

fn register(h: &mut Handlebars<'static>, part: &str, body: &str) -> Result<(), TemplateError> {
    h.register_template_string(part, body).map_err(|e| {
        let (line, column) = e.pos().unwrap_or((0, 0));
        TemplateError::Syntax {
            part: part.to_string(),
            line,
            column,
            reason: e.reason().to_string(),
        }
    })
}

fn render_error(part: &str, e: handlebars::RenderError) -> RenderError {
    let field = match e.reason() {
        handlebars::RenderErrorReason::MissingVariable(Some(v)) => Some(v.clone()),
        _ => None,
    };
    let reason = match &field {
        Some(f) => format!("missing field `{f}`"),
        None => e.reason().to_string(),
    };
    // Errors inside a partial name that partial; otherwise the part being rendered.
    let part = e
        .template_name
        .clone()
        .filter(|t| t != part && t != "html" && t != "text" && t != "subject")
        .map(|t| format!("{part} (partial {t})"))
        .unwrap_or_else(|| part.to_string());
    RenderError {
        part,
        line: e.line_no,
        column: e.column_no,
        reason,
        field,
    }
}

/// The text alternative for a message that has no text template.
pub fn html_to_text(html: &str) -> String {
    html2text::config::plain()
        .string_from_read(html.as_bytes(), 78)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn src(subject: &str, html: &str, text: Option<&str>) -> TemplateSource {
        TemplateSource {
            subject: subject.into(),
            html: html.into(),
            text: text.map(Into::into),
            partials: BTreeMap::new(),
        }
    }

    #[test]
    fn html_is_escaped_subject_and_text_are_not() {
        let t = CompiledTemplate::compile(&src(
            "News for {{name}}",
            "<p>Hello {{name}}</p>",
            Some("Hello {{name}}"),
        ))
        .unwrap();
        let out = t.render(json!({"name": "Tom & <Jerry>"})).unwrap();
        assert_eq!(out.subject, "News for Tom & <Jerry>");
        assert_eq!(out.html, "<p>Hello Tom &amp; &lt;Jerry&gt;</p>");
        assert_eq!(out.text, "Hello Tom & <Jerry>");
    }

    #[test]
    fn strict_mode_names_the_missing_field_and_its_position() {
        let t =
            CompiledTemplate::compile(&src("Hi", "<p>a</p>\n<p>{{first_name}}</p>", None)).unwrap();
        let err = t.render(json!({"name": "x"})).unwrap_err();
        assert_eq!(err.part, "html");
        assert_eq!(err.field.as_deref(), Some("first_name"));
        assert_eq!(err.line, Some(2));
        assert_eq!(
            err.to_string(),
            "html line 2, column 4: missing field `first_name`"
        );
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let err = CompiledTemplate::compile(&src("Hi", "<p>\n{{#if x}}a{{/each}}</p>", None))
            .unwrap_err();
        match err {
            TemplateError::Syntax { part, line, .. } => {
                assert_eq!(part, "html");
                assert_eq!(line, 2);
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn partials_and_layouts_render_and_non_ascii_survives() {
        let mut s = src(
            "Grüße, {{name}} ✉",
            "{{#> layouts/base}}<p>Hallo {{name}}</p>{{> footer}}{{/layouts/base}}",
            None,
        );
        s.partials.insert(
            "layouts/base".into(),
            "<html><body><div class=\"wrap\">{{> @partial-block}}</div></body></html>".into(),
        );
        s.partials
            .insert("footer".into(), "<footer>Straße 1, 東京</footer>".into());
        let t = CompiledTemplate::compile(&s).unwrap();
        let out = t.render(json!({"name": "Zoë Ñúñez"})).unwrap();
        assert_eq!(out.subject, "Grüße, Zoë Ñúñez ✉");
        assert!(out.html.contains(
            "<div class=\"wrap\"><p>Hallo Zoë Ñúñez</p><footer>Straße 1, 東京</footer></div>"
        ));
        assert!(out.text.contains("Hallo Zoë Ñúñez"), "{}", out.text);
        assert!(out.text.contains("Straße 1, 東京"));
    }

    #[test]
    fn missing_field_inside_a_partial_names_the_partial() {
        let mut s = src("Hi", "<p>{{> card}}</p>", None);
        s.partials.insert("card".into(), "<b>{{title}}</b>".into());
        let t = CompiledTemplate::compile(&s).unwrap();
        let err = t.render(json!({})).unwrap_err();
        assert_eq!(err.part, "html (partial card)");
        assert_eq!(err.field.as_deref(), Some("title"));
    }

    #[test]
    fn empty_subject_is_rejected() {
        assert!(matches!(
            CompiledTemplate::compile(&src("  ", "<p>x</p>", None)),
            Err(TemplateError::Invalid { .. })
        ));
    }

    #[test]
    fn the_shipped_templates_are_built_in_as_the_folder_holds_them() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
        let on_disk = TemplateSource::load_dir(&shipped, "newsletter").unwrap();
        assert!(
            on_disk.partials.contains_key("layouts/email"),
            "{:?}",
            on_disk.partials.keys()
        );
        let nowhere = Path::new(env!("CARGO_MANIFEST_DIR")).join("no-such-folder");
        assert_eq!(
            TemplateSource::load_dir(&nowhere, "newsletter").unwrap(),
            on_disk
        );
        assert_eq!(
            TemplateSource::load_dir(&nowhere, "nope"),
            Err(TemplateError::NotFound("nope".into()))
        );
        assert!(matches!(
            TemplateSource::load_dir(&nowhere, "../etc"),
            Err(TemplateError::BadName(_))
        ));
        // Every shipped file is built in: a template added to the folder must be added here too.
        let mut files = Vec::new();
        for sub in std::fs::read_dir(&shipped).unwrap() {
            let sub = sub.unwrap().path();
            for f in std::fs::read_dir(&sub).unwrap() {
                let f = f.unwrap().path();
                files.push(f.strip_prefix(&shipped).unwrap().display().to_string());
            }
        }
        files.sort();
        let mut built: Vec<String> = BUILT_IN.iter().map(|(p, _)| p.to_string()).collect();
        built.sort();
        assert_eq!(files, built);
    }

    #[test]
    fn load_dir_rejects_traversal_and_unknown_names() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            TemplateSource::load_dir(dir.path(), "../etc"),
            Err(TemplateError::BadName("../etc".into()))
        );
        assert_eq!(
            TemplateSource::load_dir(dir.path(), "nope"),
            Err(TemplateError::NotFound("nope".into()))
        );
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// A message with its markup reduced to what a reader sees: tag names in order and text,
    /// without attributes, the `<style>` block, and the elements a parser adds on its own.
    fn structure(html: &str) -> String {
        let mut out = String::new();
        let mut rest = html;
        while let Some(i) = rest.find('<') {
            out.push_str(&rest[..i]);
            let tag = &rest[i..];
            let end = tag.find('>').map_or(tag.len(), |e| e + 1);
            let name: String = tag[1..]
                .trim_start_matches('/')
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            if name == "style" && !tag.starts_with("</") {
                let close = tag.find("</style>").map_or(tag.len(), |c| c + 8);
                rest = &tag[close..];
                continue;
            }
            if !["html", "head", "body", "tbody"].contains(&name.as_str()) {
                out.push_str(if tag.starts_with("</") { "</" } else { "<" });
                out.push_str(&name);
                out.push('>');
            }
            rest = &tag[end..];
        }
        out.push_str(rest);
        out.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// A table layout of the common shape — rows straight in the table, loops and conditions
    /// between them, `../` lookups and `@index`, a partial in a cell, a footer row after the loop —
    /// is inlined, and renders what it renders as written: the same rows in the same order.
    #[test]
    fn a_table_layout_with_blocks_between_its_rows_is_inlined_with_its_structure() {
        let html = r#"<!DOCTYPE html><html><head><style>
  td { font-family: Arial; } .price { color: #c00; } .footer td { font-size: 11px; }
  @media (max-width: 600px) { td { padding: 4px !important; } }
</style></head><body>
<table width="600">
  <tr><td>{{shop}} for {{name}}</td></tr>
  {{#each sections}}
  <tr><td><h2>{{@index}}. {{title}}</h2></td></tr>
  {{#each items}}
  <tr><td>{{name}} in {{../title}} for {{../../name}}: {{> price}}</td></tr>
  {{/each}}
  {{#if note}}<tr><td><em>{{note}}</em></td></tr>{{else}}<tr><td>-</td></tr>{{/if}}
  {{/each}}
  <tr class="footer"><td>{{shop}} · <a href="{{unsubscribe_url}}">unsubscribe</a></td></tr>
</table>
</body></html>"#;
        let src = TemplateSource {
            subject: "s".into(),
            html: html.into(),
            text: Some("t".into()),
            partials: BTreeMap::from([(
                "price".to_string(),
                r#"<span class="price">{{price}} EUR</span>"#.to_string(),
            )]),
        };
        let t = CompiledTemplate::compile(&src).unwrap();
        assert!(t.css_inlined, "{:?}", t.css_not_inlined);
        let data = serde_json::json!({
            "shop": "ACME", "name": "Zoë", "unsubscribe_url": "https://example.com/u/x",
            "sections": [
                {"title": "Garden", "note": "new!", "items": [{"name": "Chair", "price": 89}, {"name": "Can", "price": 19.9}]},
                {"title": "Kitchen", "items": [{"name": "Pan", "price": 30}]}
            ]
        });
        let out = t.render(data.clone()).unwrap();
        let mut plain = Handlebars::new();
        plain
            .register_partial("price", &src.partials["price"])
            .unwrap();
        plain.register_template_string("html", html).unwrap();
        let as_written = plain.render("html", &data).unwrap();
        assert_eq!(structure(&out.html), structure(&as_written));
        assert!(
            out.html
                .contains(r#"<span class="price" style="color: #c00;">89 EUR</span>"#),
            "{}",
            out.html
        );
        // The footer row is still the table's last, its cell styled by the rule for it.
        let footer = out.html.rfind("<tr class=\"footer\"><td style=\"").unwrap();
        assert!(
            out.html[footer..].contains("font-size: 11px"),
            "{}",
            out.html
        );
        let after = &out.html[footer + 1..];
        assert!(
            !after.contains("<tr") && after.contains("</tbody></table>"),
            "{}",
            out.html
        );
        assert!(
            out.html.contains("@media (max-width: 600px)"),
            "{}",
            out.html
        );
        let rows: Vec<&str> = out.html.matches("<tr").collect();
        // The header, each section's title, items and note, the footer.
        assert_eq!(
            rows.len(),
            1 + (1 + 2 + 1) + (1 + 1 + 1) + 1,
            "{}",
            out.html
        );
    }

    /// The CSV-fillable `spring` template: a table layout with a loop between its rows, inlined.
    #[test]
    fn the_spring_template_inlines_its_css_around_its_loop() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
        let src = TemplateSource::load_dir(&root, "spring").unwrap();
        assert!(src.html.contains("{{#each picks}}"));
        let t = CompiledTemplate::compile(&src).unwrap();
        assert!(t.css_inlined, "the shipped template must inline cleanly");
        let ctx = serde_json::json!({
            "email": "zoe@example.org", "name": "Zoë", "city": "Köln", "currency": "EUR",
            "unsubscribe_url": "https://example.com/u/x",
            "offer": {"code": "SPRING-ZM", "percent": "20", "until": "30 April"},
            "picks": [{"title": "Chair", "price": "89.00", "url": "https://s.example/1"},
                      {"title": "Shirt", "price": "45.50", "url": "https://s.example/2"}]
        });
        let out = t.render(ctx).unwrap();
        assert_eq!(out.subject, "Zoë, 20% off this spring, until 30 April");
        assert_eq!(
            out.html.matches("<td class=\"pick\" style=\"").count(),
            2,
            "{}",
            out.html
        );
        assert!(out.html.find("Chair").unwrap() < out.html.find("Shirt").unwrap());
        assert!(out.html.contains("@media only screen"));
        assert!(
            out.text.contains("- Shirt, 45.50 EUR: https://s.example/2"),
            "{}",
            out.text
        );
    }

    /// The newsletter in `templates/` compiles, gets its CSS inlined, and renders personal data.
    #[test]
    fn the_newsletter_template_inlines_its_css_and_renders() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
        let src = TemplateSource::load_dir(&root, "newsletter").unwrap();
        let t = CompiledTemplate::compile(&src).unwrap();
        assert!(t.css_inlined, "the shipped template must inline cleanly");
        let ctx = serde_json::json!({
            "email": "zoe@example.org", "name": "Zoë Müller", "first_name": "Zoë", "city": "Köln",
            "member_since": 2019, "unsubscribe_url": "https://example.com/u/x",
            "articles": [{"title": "A & B", "summary": "s1", "url": "https://e.example/1"},
                         {"title": "C", "summary": "s2", "url": "https://e.example/2"}]
        });
        let out = t.render(ctx).unwrap();
        assert_eq!(out.subject, "Zoë, this week's Gazette: A & B");
        assert!(out.html.contains("<h2 style=\""), "{}", out.html);
        assert!(out.html.contains("A &amp; B"));
        assert_eq!(out.html.matches("Read more").count(), 2);
        assert!(out.html.contains("@media only screen"));
        assert!(out.html.contains("href=\"https://example.com/u/x\""));
        assert!(out.text.contains("## A & B"));
        assert!(out.text.contains("Unsubscribe: https://example.com/u/x"));
    }
}
