//! The data a CSV row becomes. A header with dots builds nested data, so a flat file can fill a
//! template that loops or reads fields of an object: `offer.code` is `{"offer": {"code": …}}`, and
//! a number between dots is a place in a list, so `articles.0.title`, `articles.1.title` are
//! `{"articles": [{"title": …}, {"title": …}]}`. A list item whose cells are all empty in a row is
//! left out of that row, so rows may hold fewer items than the header has room for.
//!
//! The header is read into a [`Columns`] shape once; a header that cannot be one shape (`offer` and
//! `offer.code`, `a.0` and `a.x`, a list whose places skip one) is refused naming its columns.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The deepest a column may nest: `a.b.c.d.e.f.g.h`.
pub const MAX_DEPTH: usize = 8;

/// Where each column's cell goes in a row's data.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    root: BTreeMap<String, Node>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// The cell of this column.
    Cell(usize),
    Object(BTreeMap<String, Node>, String),
    /// Items by place (0, 1, … without gaps once the header is read), and the column path that
    /// made it a list, for messages.
    List(BTreeMap<usize, Node>, String),
}

enum Segment<'a> {
    Key(&'a str),
    Place(usize),
}

impl Columns {
    /// The shape of `headers` (lower-cased names), leaving out the columns in `skip` (`email`,
    /// `name`). A message names the column as written in the header.
    pub fn new(headers: &[String], skip: &[usize]) -> Result<Self, String> {
        let mut root = BTreeMap::new();
        for (i, h) in headers.iter().enumerate() {
            if skip.contains(&i) {
                continue;
            }
            let path = segments(h)?;
            let (first, rest) = match path.split_first() {
                Some((Segment::Key(k), rest)) => (*k, rest),
                _ => {
                    return Err(format!(
                        "column `{h}`: a name starts with a field, not a number"
                    ))
                }
            };
            if !rest.is_empty() && matches!(first, "email" | "name") {
                return Err(format!(
                    "column `{h}`: `{first}` is the recipient's own column and holds no fields"
                ));
            }
            insert(&mut root, first, rest, i, h, first)?;
        }
        for (key, node) in &root {
            check_places(key, node)?;
        }
        Ok(Self { root })
    }

    /// A row's data: every cell where its column puts it.
    pub fn data(&self, cells: &csv::StringRecord) -> Map<String, Value> {
        self.root
            .iter()
            .map(|(k, n)| (k.clone(), build(n, cells)))
            .collect()
    }
}

fn segments(h: &str) -> Result<Vec<Segment<'_>>, String> {
    let parts: Vec<&str> = h.split('.').collect();
    if parts.len() > MAX_DEPTH {
        return Err(format!(
            "column `{h}` nests {} deep; at most {MAX_DEPTH}",
            parts.len()
        ));
    }
    parts
        .into_iter()
        .map(|p| {
            if p.is_empty() {
                Err(format!("column `{h}` has an empty name between dots"))
            } else if p.bytes().all(|b| b.is_ascii_digit()) {
                p.parse()
                    .ok()
                    .filter(|n| *n < crate::domain::validate::MAX_COLUMNS)
                    .map(Segment::Place)
                    .ok_or_else(|| {
                        format!("column `{h}`: place {p} is past any list a header can fill")
                    })
            } else {
                Ok(Segment::Key(p))
            }
        })
        .collect()
}

fn insert(
    map: &mut BTreeMap<String, Node>,
    key: &str,
    rest: &[Segment<'_>],
    col: usize,
    header: &str,
    at: &str,
) -> Result<(), String> {
    match map.get_mut(key) {
        None => {
            map.insert(key.to_string(), fresh(rest, col, header, at)?);
            Ok(())
        }
        Some(node) => descend(node, rest, col, header, at),
    }
}

/// The node for `rest` of a column's path, nothing there yet.
fn fresh(rest: &[Segment<'_>], col: usize, header: &str, at: &str) -> Result<Node, String> {
    let Some((next, rest)) = rest.split_first() else {
        return Ok(Node::Cell(col));
    };
    Ok(match next {
        Segment::Key(k) => {
            let at = format!("{at}.{k}");
            Node::Object(
                BTreeMap::from([(k.to_string(), fresh(rest, col, header, &at)?)]),
                header.to_string(),
            )
        }
        Segment::Place(p) => {
            let at = format!("{at}.{p}");
            Node::List(
                BTreeMap::from([(*p, fresh(rest, col, header, &at)?)]),
                header.to_string(),
            )
        }
    })
}

fn descend(
    node: &mut Node,
    rest: &[Segment<'_>],
    col: usize,
    header: &str,
    at: &str,
) -> Result<(), String> {
    match (node, rest.split_first()) {
        (Node::Cell(_), _) | (Node::Object(..) | Node::List(..), None) => Err(format!(
            "column `{header}` and another column both fill `{at}`, one as a value and one with fields inside it"
        )),
        (Node::Object(fields, _), Some((Segment::Key(k), rest))) => {
            insert(fields, k, rest, col, header, &format!("{at}.{k}"))
        }
        (Node::List(items, _), Some((Segment::Place(p), rest))) => {
            let at = format!("{at}.{p}");
            match items.get_mut(p) {
                None => {
                    items.insert(*p, fresh(rest, col, header, &at)?);
                    Ok(())
                }
                Some(item) => descend(item, rest, col, header, &at),
            }
        }
        (Node::Object(_, by), Some((Segment::Place(_), _))) => Err(format!(
            "column `{header}` makes `{at}` a list, where column `{by}` gives it named fields"
        )),
        (Node::List(_, by), Some((Segment::Key(_), _))) => Err(format!(
            "column `{header}` gives `{at}` named fields, where column `{by}` makes it a list"
        )),
    }
}

/// A list's places must run 0, 1, 2, …: a gap would be an item no row can fill.
fn check_places(at: &str, node: &Node) -> Result<(), String> {
    match node {
        Node::Cell(_) => Ok(()),
        Node::Object(fields, _) => fields
            .iter()
            .try_for_each(|(k, n)| check_places(&format!("{at}.{k}"), n)),
        Node::List(items, _) => {
            if let Some(missing) = (0..items.len()).find(|p| !items.contains_key(p)) {
                return Err(format!(
                    "the list `{at}` has no place {missing}: its columns must number its items 0, 1, 2, …"
                ));
            }
            items
                .iter()
                .try_for_each(|(p, n)| check_places(&format!("{at}.{p}"), n))
        }
    }
}

fn build(node: &Node, cells: &csv::StringRecord) -> Value {
    match node {
        Node::Cell(i) => Value::String(cells.get(*i).unwrap_or_default().to_string()),
        Node::Object(fields, _) => Value::Object(
            fields
                .iter()
                .map(|(k, n)| (k.clone(), build(n, cells)))
                .collect(),
        ),
        Node::List(items, _) => Value::Array(
            items
                .values()
                .filter(|n| !all_empty(n, cells))
                .map(|n| build(n, cells))
                .collect(),
        ),
    }
}

fn all_empty(node: &Node, cells: &csv::StringRecord) -> bool {
    match node {
        Node::Cell(i) => cells.get(*i).unwrap_or_default().is_empty(),
        Node::Object(fields, _) => fields.values().all(|n| all_empty(n, cells)),
        Node::List(items, _) => items.values().all(|n| all_empty(n, cells)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shape(header: &str) -> Result<Columns, String> {
        let headers: Vec<String> = header.split(',').map(str::to_string).collect();
        let email = headers.iter().position(|h| h == "email");
        Columns::new(&headers, &email.into_iter().collect::<Vec<_>>())
    }

    fn row(c: &Columns, cells: &str) -> Value {
        Value::Object(c.data(&csv::StringRecord::from(
            cells.split(',').collect::<Vec<_>>(),
        )))
    }

    #[test]
    fn dotted_headers_build_objects_and_lists() {
        let c = shape("email,city,offer.code,offer.until,articles.0.title,articles.0.url,articles.1.title,articles.1.url").unwrap();
        assert_eq!(
            row(&c, "a@x.org,Köln,SPRING,May,Tea,https://t,Cake,https://c"),
            json!({"city": "Köln", "offer": {"code": "SPRING", "until": "May"},
                   "articles": [{"title": "Tea", "url": "https://t"}, {"title": "Cake", "url": "https://c"}]})
        );
        // A row with one article: the empty second item is left out, an empty plain field kept.
        assert_eq!(
            row(&c, "a@x.org,,,,Tea,https://t,,"),
            json!({"city": "", "offer": {"code": "", "until": ""}, "articles": [{"title": "Tea", "url": "https://t"}]})
        );
        // Lists of plain values, and lists in lists.
        let c = shape("email,tags.0,tags.1,rows.0.0,rows.0.1,rows.1.0").unwrap();
        assert_eq!(
            row(&c, "a@x.org,new,,1,2,3"),
            json!({"tags": ["new"], "rows": [["1", "2"], ["3"]]})
        );
    }

    #[test]
    fn a_header_that_is_not_one_shape_is_refused_naming_its_columns() {
        for (header, says) in [
            (
                "email,offer,offer.code",
                "`offer.code` and another column both fill `offer`",
            ),
            (
                "email,offer.code,offer",
                "`offer` and another column both fill `offer`",
            ),
            (
                "email,a.0,a.x",
                "`a.x` gives `a` named fields, where column `a.0` makes it a list",
            ),
            (
                "email,a.x,a.0",
                "`a.0` makes `a` a list, where column `a.x` gives it named fields",
            ),
            (
                "email,items.0.t,items.2.t",
                "the list `items` has no place 1",
            ),
            ("email,a..b", "column `a..b` has an empty name between dots"),
            ("email,0.a", "column `0.a`: a name starts with a field"),
            (
                "email,email.domain",
                "`email` is the recipient's own column",
            ),
            ("email,a.b.c.d.e.f.g.h.i", "nests 9 deep; at most 8"),
            ("email,a.100", "place 100 is past any list"),
        ] {
            let err = shape(header).unwrap_err();
            assert!(err.contains(says), "{header}: {err}");
        }
        assert!(shape("email,a.b.c.d.e.f.g.h").is_ok());
    }
}
