//! What a template may cost, decided before any recipient is rendered and enforced while rendering.
//!
//! Handlebars partials can include themselves (directly, through each other, or through an inline
//! partial) and can expand exponentially (each level including the one below ten times). The first
//! overflows the stack, which aborts the whole process; the second costs gigabytes. So every compiled
//! template is walked once the way handlebars would render it — partial by partial, with inline
//! partials scoped as handlebars scopes them — without data, and refused if that walk nests too
//! deeply, meets itself, expands too far or is already too large. What depends on the data (a loop over a
//! long list) cannot be known then: each render runs under a [`Budget`] (bytes out, loop turns, a
//! deadline) that the output, the escape function and our own `each` helper draw on.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use handlebars::template::{Parameter, Template, TemplateElement};
use handlebars::{
    BlockContext, BlockParams, Context, Handlebars, Helper, HelperDef, HelperResult, JsonValue,
    Output, RenderContext, RenderError, RenderErrorReason, Renderable,
};
use serde::{Deserialize, Serialize};

/// Limits checked when a template is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateLimits {
    /// Blocks and partials nested inside each other, counted through every partial.
    pub max_depth: usize,
    /// Partials rendered for one message, ignoring loops (which the render budget bounds).
    pub max_expansion: usize,
    /// Source bytes of one part (subject, HTML, text or one partial).
    pub max_source_bytes: usize,
}

impl Default for TemplateLimits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_expansion: 500,
            max_source_bytes: 512 * 1024,
        }
    }
}

/// Limits of one recipient's render. They travel with each render job, so every renderer process
/// applies the conductor's `[campaigns]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RenderLimits {
    /// Subject, HTML and text together.
    pub max_message_bytes: usize,
    /// Wall-clock time for one recipient's subject, HTML and text.
    pub max_render_ms: u64,
}

impl Default for RenderLimits {
    fn default() -> Self {
        Self {
            // Twenty times Gmail's clipping point and well under every provider's message limit
            // (Postmark 10 MB, Mailgun 25 MB, SES and Resend 40 MB). A batch holds up to
            // batch_size of these in memory.
            max_message_bytes: 2 * 1024 * 1024,
            max_render_ms: 500,
        }
    }
}

/// Loop turns in one render, whatever the deadline says: a guard against a clock that is slow to
/// notice (and a cap on the work an empty loop body can ask for).
const MAX_LOOP_TURNS: u64 = 1_000_000;

/// Why a template was refused at compile time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "partial `{name}` includes itself ({chain}); recursion through partials is not allowed"
    )]
    Recursive { name: String, chain: String },
    #[error("blocks and partials are nested more than {limit} deep ({chain})")]
    TooDeep { limit: usize, chain: String },
    #[error("the template renders more than {limit} partials per message; nest fewer partials inside each other")]
    TooWide { limit: usize },
    #[error(
        "the template alone is over {limit} bytes per message ([campaigns] max_message_bytes)"
    )]
    TooLarge { limit: usize },
    #[error("more than {limit} `{{{{{{…}}}}}}` expressions inside layout blocks per message: write `{{{{…}}}}`, or use fewer")]
    Unescaped { limit: usize },
    #[error("partial `{0}` is not defined")]
    UnknownPartial(String),
    #[error("partial names must be written out: `{{{{> (…)}}}}` chooses a partial from data and cannot be checked")]
    DynamicPartial,
    #[error("the template uses a construct this version cannot bound")]
    Unsupported,
    #[error("{part} is {bytes} bytes; the limit is {limit}")]
    SourceTooLarge {
        part: String,
        bytes: usize,
        limit: usize,
    },
}

/// The inline partials visible at one point of the walk, and where the caller's scope continues.
struct Scope<'t> {
    inline: HashMap<&'t str, &'t Template>,
    parent: Option<Rc<Scope<'t>>>,
    /// The static size of the `{{#> p}}…{{/p}}` body that `{{> @partial-block}}` writes here.
    block_bytes: Option<u64>,
}

impl<'t> Scope<'t> {
    fn find(&self, name: &str) -> Option<&'t Template> {
        self.inline
            .get(name)
            .copied()
            .or_else(|| self.parent.as_ref().and_then(|p| p.find(name)))
    }
}

struct Walk<'t> {
    globals: &'t HashMap<String, Template>,
    limits: TemplateLimits,
    max_bytes: u64,
    expansions: usize,
    bytes: u64,
    /// Partials being walked, outermost first, for the messages.
    chain: Vec<String>,
    /// How many `{{#> p}}…{{/p}}` bodies enclose the walk now.
    in_body: usize,
    /// `{{{x}}}` met inside such bodies: handlebars renders a body to a string of its own before
    /// any output sees it, and an unescaped value is charged nowhere on the way.
    unescaped: usize,
}

/// `{{{x}}}` inside layout bodies per message; each writes at most a recipient's data (64 KiB).
const MAX_UNESCAPED_IN_BODIES: usize = 32;

/// Walks the roots of `registry` (by name) as a render would and refuses what could not render within
/// `limits`. Cost: at most `max_expansion` partial walks, each linear in its template.
pub fn check(
    registry: &Handlebars<'_>,
    roots: &[&str],
    limits: TemplateLimits,
    max_message_bytes: usize,
) -> Result<(), Refusal> {
    let globals = registry.get_templates();
    for root in roots {
        let Some(t) = globals.get(*root) else {
            continue;
        };
        let mut walk = Walk {
            globals,
            limits,
            max_bytes: max_message_bytes as u64,
            expansions: 0,
            bytes: 0,
            chain: vec![root.to_string()],
            in_body: 0,
            unescaped: 0,
        };
        let scope = Rc::new(Scope {
            inline: inline_partials(t),
            parent: None,
            block_bytes: None,
        });
        walk.template(t, 0, &scope)?;
    }
    Ok(())
}

/// The inline partials a template defines anywhere in its own elements (not inside other inline
/// partials' bodies): handlebars registers them as it meets them, so all may be visible below.
fn inline_partials(t: &Template) -> HashMap<&str, &Template> {
    fn collect<'t>(t: &'t Template, out: &mut HashMap<&'t str, &'t Template>) {
        for e in &t.elements {
            match e {
                TemplateElement::DecoratorBlock(d) | TemplateElement::DecoratorExpression(d)
                    if d.name.as_name() == Some("inline") =>
                {
                    let name = match d.params.first() {
                        Some(Parameter::Literal(JsonValue::String(s))) => Some(s.as_str()),
                        Some(p) => p.as_name(),
                        None => None,
                    };
                    if let (Some(name), Some(body)) = (name, d.template.as_ref()) {
                        out.insert(name, body);
                    }
                }
                TemplateElement::HelperBlock(h) => {
                    for inner in [&h.template, &h.inverse].into_iter().flatten() {
                        collect(inner, out);
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = HashMap::new();
    collect(t, &mut out);
    out
}

fn partial_name(p: &Parameter) -> Result<&str, Refusal> {
    match p {
        Parameter::Literal(JsonValue::String(s)) => Ok(s),
        Parameter::Subexpression(_) => Err(Refusal::DynamicPartial),
        other => other.as_name().ok_or(Refusal::DynamicPartial),
    }
}

impl<'t> Walk<'t> {
    fn chain(&self, next: &str) -> String {
        let mut c = self.chain.clone();
        c.push(next.to_string());
        c.join(" → ")
    }

    fn deeper(&self, depth: usize, next: &str) -> Result<usize, Refusal> {
        if depth + 1 > self.limits.max_depth {
            // A partial met again on the way down is the real reason a walk grows without end.
            let mut chain = self.chain.clone();
            chain.push(next.to_string());
            for j in 1..chain.len() {
                if chain[..j].contains(&chain[j]) {
                    return Err(Refusal::Recursive {
                        name: chain[j].clone(),
                        chain: chain[..=j].join(" → "),
                    });
                }
            }
            return Err(Refusal::TooDeep {
                limit: self.limits.max_depth,
                chain: self.chain(next),
            });
        }
        Ok(depth + 1)
    }

    fn add_bytes(&mut self, n: u64) -> Result<(), Refusal> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.max_bytes {
            return Err(Refusal::TooLarge {
                limit: self.max_bytes as usize,
            });
        }
        Ok(())
    }

    fn expand(&mut self) -> Result<(), Refusal> {
        self.expansions += 1;
        if self.expansions > self.limits.max_expansion {
            return Err(Refusal::TooWide {
                limit: self.limits.max_expansion,
            });
        }
        Ok(())
    }

    fn template(
        &mut self,
        t: &'t Template,
        depth: usize,
        scope: &Rc<Scope<'t>>,
    ) -> Result<(), Refusal> {
        for e in &t.elements {
            match e {
                TemplateElement::RawString(s) => self.add_bytes(s.len() as u64)?,
                TemplateElement::HtmlExpression(_) if self.in_body > 0 => {
                    self.unescaped += 1;
                    if self.unescaped > MAX_UNESCAPED_IN_BODIES {
                        return Err(Refusal::Unescaped {
                            limit: MAX_UNESCAPED_IN_BODIES,
                        });
                    }
                }
                TemplateElement::Expression(_)
                | TemplateElement::HtmlExpression(_)
                | TemplateElement::Comment(_) => {}
                TemplateElement::HelperBlock(h) => {
                    let name = h.name.as_name().unwrap_or("block");
                    let depth = self.deeper(depth, &format!("#{name}"))?;
                    for inner in [&h.template, &h.inverse].into_iter().flatten() {
                        self.template(inner, depth, scope)?;
                    }
                }
                // Inline partials are walked where they are used, not where they are defined.
                TemplateElement::DecoratorBlock(_) | TemplateElement::DecoratorExpression(_) => {}
                TemplateElement::PartialExpression(d) => {
                    self.partial(partial_name(&d.name)?, None, depth, scope)?
                }
                TemplateElement::PartialBlock(d) => {
                    self.partial(partial_name(&d.name)?, d.template.as_ref(), depth, scope)?
                }
                // A kind of element this walk does not know cannot be bounded: refuse it.
                _ => return Err(Refusal::Unsupported),
            }
        }
        Ok(())
    }

    fn partial(
        &mut self,
        name: &str,
        block: Option<&'t Template>,
        depth: usize,
        scope: &Rc<Scope<'t>>,
    ) -> Result<(), Refusal> {
        if name == "@partial-block" {
            // Handlebars renders the caller's block once, to a string, and writes that string here.
            return match (scope.block_bytes, block) {
                (Some(n), _) => self.add_bytes(n),
                (None, Some(fallback)) => {
                    let depth = self.deeper(depth, name)?;
                    self.template(fallback, depth, scope)
                }
                (None, None) => Ok(()),
            };
        }
        let found = scope.find(name).or_else(|| self.globals.get(name));
        let Some(partial) = found else {
            // `{{#> missing}}fallback{{/missing}}` renders its own block instead.
            return match block {
                Some(fallback) => {
                    let depth = self.deeper(depth, name)?;
                    self.template(fallback, depth, scope)
                }
                None => Err(Refusal::UnknownPartial(name.to_string())),
            };
        };
        self.expand()?;
        let depth = self.deeper(depth, name)?;
        self.chain.push(name.to_string());
        // The block is rendered in the partial's scope before the partial itself, so its inline
        // partials are visible inside the partial (how layouts take overrides).
        let mut inline = inline_partials(partial);
        let mut block_bytes = scope.block_bytes;
        if let Some(body) = block {
            let before = self.bytes;
            let body_scope = Rc::new(Scope {
                inline: inline_partials(body),
                parent: Some(scope.clone()),
                block_bytes: scope.block_bytes,
            });
            self.in_body += 1;
            self.template(body, depth, &body_scope)?;
            self.in_body -= 1;
            block_bytes = Some(self.bytes - before);
            // Written where the partial says, not here.
            self.bytes = before;
            inline.extend(inline_partials(body));
        }
        let inner = Rc::new(Scope {
            inline,
            parent: Some(scope.clone()),
            block_bytes,
        });
        self.template(partial, depth, &inner)?;
        self.chain.pop();
        Ok(())
    }
}

/// What one render may still spend. Lives in a thread-local for the length of one recipient's
/// render: handlebars offers no per-render state to helpers and escape functions.
#[derive(Debug)]
struct Budget {
    deadline: Instant,
    max_ms: u64,
    max_bytes: usize,
    /// Bytes produced by escaped expressions and by loop bodies (counted at the outermost loop).
    produced: usize,
    turns: u64,
    loop_depth: usize,
    exceeded: Option<Exceeded>,
}

/// Which limit a render ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Bytes(usize),
    Time(u64),
    Turns(u64),
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exceeded::Bytes(n) => write!(
                f,
                "the message is over {n} bytes ([campaigns] max_message_bytes)"
            ),
            Exceeded::Time(ms) => {
                write!(f, "rendering took over {ms} ms ([campaigns] max_render_ms)")
            }
            Exceeded::Turns(n) => write!(f, "loops ran over {n} times in one message"),
        }
    }
}

thread_local! {
    static BUDGET: RefCell<Option<Budget>> = const { RefCell::new(None) };
}

/// Runs `f` (one recipient's render) under `limits`; `Err` names the limit it ran into.
pub fn within<T>(limits: RenderLimits, f: impl FnOnce() -> T) -> Result<T, Exceeded> {
    BUDGET.with(|b| {
        *b.borrow_mut() = Some(Budget {
            deadline: Instant::now() + Duration::from_millis(limits.max_render_ms),
            max_ms: limits.max_render_ms,
            // Partial-block bodies are produced once and written again: leave room for both.
            max_bytes: limits.max_message_bytes.saturating_mul(4),
            produced: 0,
            turns: 0,
            loop_depth: 0,
            exceeded: None,
        })
    });
    let out = f();
    let exceeded = BUDGET.with(|b| b.borrow_mut().take().and_then(|b| b.exceeded));
    match exceeded {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Charges `bytes` (and, with `turn`, one loop turn) to the current render; `Err` once over.
fn charge(bytes: usize, turn: bool) -> Result<(), Exceeded> {
    BUDGET.with(|b| {
        let mut b = b.borrow_mut();
        let Some(b) = b.as_mut() else {
            return Ok(());
        };
        if let Some(e) = b.exceeded {
            return Err(e);
        }
        b.produced = b.produced.saturating_add(bytes);
        if turn {
            b.turns += 1;
        }
        let e = if b.produced > b.max_bytes {
            Some(Exceeded::Bytes(b.max_bytes / 4))
        } else if b.turns > MAX_LOOP_TURNS {
            Some(Exceeded::Turns(MAX_LOOP_TURNS))
        } else if Instant::now() > b.deadline {
            Some(Exceeded::Time(b.max_ms))
        } else {
            None
        };
        match e {
            Some(e) => {
                b.exceeded = Some(e);
                Err(e)
            }
            None => Ok(()),
        }
    })
}

fn over(e: Exceeded) -> RenderError {
    RenderErrorReason::Other(e.to_string()).into()
}

/// The registry's escape function, charging what it returns.
pub fn counting_escape(escape_html: bool) -> impl Fn(&str) -> String + Send + Sync + 'static {
    move |s: &str| {
        let out = if escape_html {
            handlebars::html_escape(s)
        } else {
            s.to_string()
        };
        // Past the budget the render is already failing: return nothing more to hold.
        match charge(out.len(), false) {
            Ok(()) => out,
            Err(_) => String::new(),
        }
    }
}

/// The final output of one part: refuses to grow past `limit`.
pub struct BoundedWriter {
    pub buf: Vec<u8>,
    limit: usize,
}

impl BoundedWriter {
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
        }
    }
}

impl std::io::Write for BoundedWriter {
    fn write(&mut self, seg: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + seg.len() > self.limit {
            let e = Exceeded::Bytes(self.limit);
            BUDGET.with(|b| {
                if let Some(b) = b.borrow_mut().as_mut() {
                    b.exceeded.get_or_insert(e);
                }
            });
            return Err(std::io::Error::other(e.to_string()));
        }
        self.buf.extend_from_slice(seg);
        Ok(seg.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Passes writes on and charges them: wraps the body of the outermost loop.
struct Charged<'a> {
    inner: &'a mut dyn Output,
}

impl Output for Charged<'_> {
    fn write(&mut self, seg: &str) -> std::io::Result<()> {
        charge(seg.len(), false).map_err(|e| std::io::Error::other(e.to_string()))?;
        self.inner.write(seg)
    }
}

/// `{{#each}}` with the same meaning as handlebars' own (arrays and objects, `@index`, `@key`,
/// `@first`, `@last`, block parameters, `{{else}}`), charging every turn to the render's budget.
pub struct BoundedEach;

impl HelperDef for BoundedEach {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let param = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("each", 0))?;
        let Some(body) = h.template() else {
            return Ok(());
        };
        let items: Vec<(JsonValue, &JsonValue)> = match param.value() {
            JsonValue::Array(list) => list
                .iter()
                .enumerate()
                .map(|(i, v)| (JsonValue::from(i), v))
                .collect(),
            JsonValue::Object(map) => map
                .iter()
                .map(|(k, v)| (JsonValue::from(k.as_str()), v))
                .collect(),
            _ => Vec::new(),
        };
        let iterable = matches!(param.value(), JsonValue::Array(_) | JsonValue::Object(_));
        if items.is_empty() {
            return match h.inverse() {
                Some(inverse) => inverse.render(r, ctx, rc, out),
                None if !iterable && r.strict_mode() => {
                    Err(RenderError::strict_error(param.relative_path()))
                }
                None => Ok(()),
            };
        }
        let is_object = matches!(param.value(), JsonValue::Object(_));
        let base = param.context_path().cloned();
        let mut block = BlockContext::new();
        match &base {
            Some(path) => block.base_path_mut().clone_from(path),
            None => block.set_base_value(param.value().clone()),
        }
        rc.push_block(block);
        BUDGET.with(|b| {
            if let Some(b) = b.borrow_mut().as_mut() {
                b.loop_depth += 1;
            }
        });
        let outermost = BUDGET.with(|b| b.borrow().as_ref().is_some_and(|b| b.loop_depth == 1));
        let last = items.len() - 1;
        let mut result = Ok(());
        for (i, (key, value)) in items.iter().enumerate() {
            if let Err(e) = charge(0, true) {
                result = Err(over(e));
                break;
            }
            if let Some(block) = rc.block_mut() {
                block.set_local_var("first", JsonValue::from(i == 0));
                block.set_local_var("last", JsonValue::from(i == last));
                block.set_local_var("index", JsonValue::from(i));
                if is_object {
                    block.set_local_var("key", key.clone());
                }
                let segment = match key {
                    JsonValue::String(k) => k.clone(),
                    other => other.to_string(),
                };
                match &base {
                    Some(path) => {
                        let mut p = path.clone();
                        p.push(segment);
                        *block.base_path_mut() = p;
                    }
                    None => block.set_base_value((*value).clone()),
                }
                let mut params = BlockParams::new();
                let mut any = false;
                if let Some(name) = h.block_param() {
                    add_param(&mut params, name, base.is_some(), value)?;
                    any = true;
                } else if let Some((name, key_name)) = h.block_param_pair() {
                    add_param(&mut params, name, base.is_some(), value)?;
                    params.add_value(key_name, key.clone())?;
                    any = true;
                }
                if any {
                    block.set_block_params(params);
                }
            }
            let rendered = if outermost {
                body.render(r, ctx, rc, &mut Charged { inner: out })
            } else {
                body.render(r, ctx, rc, out)
            };
            if let Err(e) = rendered {
                result = Err(e);
                break;
            }
        }
        BUDGET.with(|b| {
            if let Some(b) = b.borrow_mut().as_mut() {
                b.loop_depth -= 1;
            }
        });
        rc.pop_block();
        result
    }
}

fn add_param<'rc>(
    params: &mut BlockParams<'rc>,
    name: &'rc str,
    by_path: bool,
    value: &JsonValue,
) -> Result<(), RenderError> {
    if by_path {
        // Relative to the block's base path, which already points at this item.
        params.add_path(name, Vec::new())
    } else {
        params.add_value(name, value.clone())
    }
}

/// Counts block nesting in the source before handlebars parses it: its parser recurses once per
/// level, so a source nested thousands deep must not reach it. Comments and escaped `\{{` are skipped.
pub fn check_nesting(part: &str, source: &str, limit: usize) -> Result<(), Refusal> {
    let bytes = source.as_bytes();
    let (mut i, mut depth) = (0usize, 0usize);
    while let Some(at) = source[i..].find("{{") {
        let start = i + at;
        i = start + 2;
        if start > 0 && bytes[start - 1] == b'\\' {
            continue;
        }
        let rest = source[i..].trim_start_matches(['{', '~']);
        if let Some(comment) = rest.strip_prefix("!--") {
            let end = comment
                .find("--")
                .map_or(source.len(), |e| source.len() - comment.len() + e);
            i = end.max(i);
            continue;
        }
        match rest.as_bytes().first() {
            Some(b'#') => depth += 1,
            Some(b'^') if !rest[1..].trim_start_matches(['~', ' ']).starts_with('}') => depth += 1,
            Some(b'/') => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > limit {
            return Err(Refusal::TooDeep {
                limit,
                chain: part.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::template::{CompiledTemplate, TemplateError, TemplateSource};

    fn src(html: &str, partials: &[(&str, &str)]) -> TemplateSource {
        TemplateSource {
            subject: "Hi".into(),
            html: html.into(),
            text: Some("t".into()),
            partials: partials
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn refusal(t: &TemplateSource) -> Refusal {
        match CompiledTemplate::compile(t) {
            Err(TemplateError::Unbounded(r)) => r,
            Err(other) => panic!("expected a refusal, got {other:?}"),
            Ok(_) => panic!("expected a refusal, the template compiled"),
        }
    }

    #[test]
    fn recursion_through_partials_is_refused_with_its_chain() {
        let inline = refusal(&src(r#"{{#*inline "r"}}x{{> r}}{{/inline}}{{> r}}"#, &[]));
        assert!(
            matches!(&inline, Refusal::Recursive { name, .. } if name == "r"),
            "{inline}"
        );
        let direct = refusal(&src("{{> a}}", &[("a", "<b>{{> a}}</b>")]));
        assert!(matches!(&direct, Refusal::Recursive { name, .. } if name == "a"));
        let mutual = refusal(&src(
            "{{> a}}",
            &[("a", "{{> b}}"), ("b", "{{#if x}}{{> a}}{{/if}}")],
        ));
        match mutual {
            Refusal::Recursive { chain, .. } => {
                assert!(chain.starts_with("html → a → b → a"), "{chain}")
            }
            other => panic!("{other:?}"),
        }
        // Through a layout's block: the body includes the layout that renders it.
        let via_block = refusal(&src(
            "{{#> l}}x{{/l}}",
            &[("l", "{{#> l}}{{> @partial-block}}{{/l}}")],
        ));
        assert!(
            matches!(via_block, Refusal::Recursive { .. }),
            "{via_block}"
        );
    }

    #[test]
    fn exponential_expansion_is_refused_before_any_render() {
        // Seven levels, each including the one below ten times: 10^7 partial renders.
        let mut partials = vec![("p0".to_string(), "x".to_string())];
        for level in 1..=7 {
            partials.push((
                format!("p{level}"),
                format!("{{{{> p{}}}}}", level - 1).repeat(10),
            ));
        }
        let p: Vec<(&str, &str)> = partials
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let started = Instant::now();
        let r = refusal(&src("{{> p7}}", &p));
        assert!(matches!(r, Refusal::TooWide { .. }), "{r}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the check itself is cheap"
        );
        // A template whose static text alone is over the message limit.
        let big = "y".repeat(400_000);
        let r = refusal(&src(
            "{{> big}}{{> big}}{{> big}}{{> big}}{{> big}}{{> big}}",
            &[("big", &big)],
        ));
        assert!(matches!(r, Refusal::TooLarge { .. }), "{r}");
    }

    #[test]
    fn nesting_is_bounded_before_the_parser_sees_it() {
        let deep = format!(
            "{}x{}",
            "{{#if a}}".repeat(20_000),
            "{{/if}}".repeat(20_000)
        );
        let r = refusal(&src(&deep, &[]));
        assert!(matches!(r, Refusal::TooDeep { .. }), "{r}");
        // Comments and escaped mustaches do not count.
        check_nesting(
            "html",
            &format!(
                "{}{{{{!-- {} --}}}}",
                r"\{{#if a}}".repeat(100),
                "{{#if}}".repeat(100)
            ),
            4,
        )
        .unwrap();
        // Nesting through partials counts too.
        let mut partials = Vec::new();
        for level in 0..40 {
            partials.push((
                format!("n{level}"),
                format!("<i>{{{{> n{}}}}}</i>", level + 1),
            ));
        }
        partials.push(("n40".into(), "end".into()));
        let p: Vec<(&str, &str)> = partials
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert!(matches!(
            refusal(&src("{{> n0}}", &p)),
            Refusal::TooDeep { .. }
        ));
    }

    #[test]
    fn unescaped_values_inside_layout_bodies_are_bounded() {
        let body = "{{{raw}}}".repeat(MAX_UNESCAPED_IN_BODIES + 1);
        let t = src(
            &format!("{{{{#> l}}}}{body}{{{{/l}}}}"),
            &[("l", "{{> @partial-block}}")],
        );
        assert!(matches!(refusal(&t), Refusal::Unescaped { .. }));
        // Outside a body they reach the bounded output directly.
        CompiledTemplate::compile(&src(&body, &[])).unwrap();
    }

    #[test]
    fn unknown_and_dynamic_partials_are_refused_but_fallback_blocks_render() {
        assert_eq!(
            refusal(&src("{{> nope}}", &[])),
            Refusal::UnknownPartial("nope".into())
        );
        assert_eq!(refusal(&src("{{> (which)}}", &[])), Refusal::DynamicPartial);
        let t = CompiledTemplate::compile(&src("{{#> nope}}fallback{{/nope}}", &[])).unwrap();
        assert_eq!(t.render(json!({})).unwrap().html, "fallback");
    }

    #[test]
    fn layouts_inline_overrides_and_partial_blocks_still_render() {
        let t = CompiledTemplate::compile(&src(
            r#"{{#> layout}}{{#*inline "side"}}S{{/inline}}<p>{{name}}</p>{{/layout}}"#,
            &[
                (
                    "layout",
                    "<main>{{> @partial-block}}</main><aside>{{> side}}</aside>",
                ),
                ("side", "default"),
            ],
        ))
        .unwrap();
        assert_eq!(
            t.render(json!({"name": "Zoë"})).unwrap().html,
            "<main><p>Zoë</p></main><aside>S</aside>"
        );
    }

    #[test]
    fn each_keeps_handlebars_meaning() {
        let t = CompiledTemplate::compile(&src(
            "{{#each items}}{{@index}}{{#if @first}}F{{/if}}{{#if @last}}L{{/if}}:{{title}}/{{../top}};{{else}}none{{/each}}\
             |{{#each map}}{{@key}}={{this}},{{/each}}|{{#each items as |it i|}}{{i}}{{it.title}}{{/each}}\
             |{{#each empty}}x{{else}}empty{{/each}}|{{#each (lookup this \"items\")}}{{title}}{{/each}}",
            &[],
        ))
        .unwrap();
        let out = t
            .render(json!({"top": "T", "items": [{"title": "a"}, {"title": "b"}], "map": {"x": 1, "y": 2}, "empty": []}))
            .unwrap();
        assert_eq!(out.html, "0F:a/T;1L:b/T;|x=1,y=2,|0a1b|empty|ab");
        // Strict mode: a missing list is an error unless there is an `{{else}}`, as with handlebars'
        // own helper.
        let err = t.render(json!({"top": "T", "empty": []})).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("map"), "{err}");
    }

    #[test]
    fn loops_and_output_are_bounded_while_rendering() {
        // Two nested loops over 20,000 items with an empty body: 4×10^8 turns, cut by the budget.
        let t = CompiledTemplate::compile(&src("{{#each a}}{{#each ../a}}{{/each}}{{/each}}", &[]))
            .unwrap();
        let a: Vec<u8> = vec![0; 20_000];
        let started = Instant::now();
        let err = t.render(json!({ "a": a })).unwrap_err();
        assert_eq!(err.part, "message");
        assert!(
            err.reason.contains("loops ran over") || err.reason.contains("max_render_ms"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        // A loop that writes: over the message limit, refused with the limit named.
        let t = CompiledTemplate::compile_with(
            &src("{{#each a}}{{../s}}{{/each}}", &[]),
            RenderLimits {
                max_message_bytes: 100_000,
                max_render_ms: 5_000,
            },
        )
        .unwrap();
        let err = t
            .render(json!({ "a": vec![0; 1000], "s": "z".repeat(1000) }))
            .unwrap_err();
        assert!(err.reason.contains("max_message_bytes"), "{err}");
        // Inside a layout's block, which handlebars renders to a string of its own first.
        let t = CompiledTemplate::compile_with(
            &src(
                "{{#> l}}{{#each a}}{{{../s}}}xxxxxxxxxx{{/each}}{{/l}}",
                &[("l", "{{> @partial-block}}")],
            ),
            RenderLimits {
                max_message_bytes: 100_000,
                max_render_ms: 5_000,
            },
        )
        .unwrap();
        let err = t
            .render(json!({ "a": vec![0; 100_000], "s": "z".repeat(1000) }))
            .unwrap_err();
        assert!(err.reason.contains("max_message_bytes"), "{err}");
        // The same template with a small list renders.
        let ok = t.render(json!({ "a": vec![0; 3], "s": "z" })).unwrap();
        assert_eq!(ok.html, "zxxxxxxxxxx".repeat(3));
    }

    #[test]
    fn deep_html_cannot_overflow_the_inliner_or_the_text_conversion() {
        let html = format!(
            "<style>p{{color:red}}</style>{}<p>x</p>{}",
            "<div>".repeat(20_000),
            "</div>".repeat(20_000)
        );
        let t = CompiledTemplate::compile(&TemplateSource {
            text: None,
            ..src(&html, &[])
        })
        .unwrap();
        let out = t.render(json!({})).unwrap();
        assert!(out.text.contains('x'));
    }
}

#[cfg(test)]
mod properties {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::template::{CompiledTemplate, TemplateSource};

    /// Pieces of handlebars that, in any order, make every shape this module has to bound: blocks
    /// left open or closed twice, partials that include each other, inline definitions, layouts.
    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "x",
            "<p>",
            "</p>",
            "{{name}}",
            "{{{raw}}}",
            "{{#if name}}",
            "{{/if}}",
            "{{else}}",
            "{{#each xs}}",
            "{{/each}}",
            "{{@index}}",
            "{{> a}}",
            "{{> b}}",
            "{{#> a}}",
            "{{/a}}",
            "{{> @partial-block}}",
            "{{#*inline \"a\"}}",
            "{{#*inline \"b\"}}",
            "{{/inline}}",
            "{{!-- c --}}",
            "{{",
            "}}",
            "\\{{",
            "{{> (x)}}",
            "{{#with o}}",
            "{{/with}}",
            "{{../name}}",
        ])
    }

    fn source() -> impl Strategy<Value = String> {
        prop::collection::vec(piece(), 0..40).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Whatever the template and data, compiling and rendering under the limits gives a value
        /// or an error: never a panic, never a stack overflow.
        #[test]
        fn any_template_compiles_and_renders_or_says_why(
            html in source(), a in source(), b in source(),
            xs in prop::collection::vec(0u32..5, 0..50),
        ) {
            let src = TemplateSource {
                subject: "s".into(),
                html,
                text: None,
                partials: BTreeMap::from([("a".to_string(), a), ("b".to_string(), b)]),
            };
            let limits = RenderLimits { max_message_bytes: 64 * 1024, max_render_ms: 200 };
            if let Ok(t) = CompiledTemplate::compile_with(&src, limits) {
                let data = serde_json::json!({"name": "n", "raw": "<b>", "xs": xs, "o": {"name": "m"}});
                if let Ok(parts) = t.render(data) {
                    prop_assert!(parts.subject.len() + parts.html.len() + parts.text.len() <= 64 * 1024);
                }
            }
        }

        #[test]
        fn nesting_count_never_panics(s in "\\PC{0,200}") {
            let _ = check_nesting("html", &s, 8);
        }
    }
}
