//! Parse `where` JSON → a compiled query, and the matcher that evaluates it on one object.
//! Pure and total: compiling validates the whole `where` and refuses what it cannot evaluate
//! (code 102, naming the problem); matching never fails and never panics, and costs time linear
//! in the query and the object (regular expressions use `regex-automata`'s meta engine, the one
//! behind the `regex` crate: no backtracking). No I/O; the one shared state is the process-wide
//! table of compiled `$regex` patterns (`pattern`), which identical patterns share and which
//! bounds their memory ([`QueryLimits`], [`Query::regex_memory`], [`pattern::live_memory`]).
//!
//! Supported: implicit equality and `$eq $ne $lt $lte $gt $gte $in $nin $all $containedBy
//! $exists $regex/$options $nearSphere/$maxDistance… $within/$box $geoWithin/$polygon
//! $geoWithin/$centerSphere $geoIntersects/$point $or $and $nor`, dotted keys (a numeric segment
//! indexes an array), `$relativeTime` bounds, and Date, Pointer, GeoPoint, Bytes, File and
//! Polygon values. Refused by name: relations and sub-queries (`$relatedTo $inQuery $notInQuery
//! $select $dontSelect`), `$text`, `$elemMatch`.
//!
//! Semantics follow MongoDB where Parse's behaviour is an accident of JavaScript (the "Query
//! semantics" table in README.md lists every difference): comparisons only between values of
//! one kind (numbers, strings, instants — `createdAt`/`updatedAt` ISO strings count as
//! instants), a missing field never satisfies a comparison, `$regex` or `$all`, array fields
//! match when any element does, `{field: null}` matches null or missing.
//!
//! Submodules: `operand` (constraint values and equality), `pattern` (`$regex`, the shared
//! table of compiled patterns), `budget` (the `$regex` limits of one query), `geo` (haversine
//! and point in polygon as Parse's SDK computes them), `canonical` (dedupe key).

mod budget;
mod canonical;
mod geo;
mod operand;
pub mod pattern;

pub use canonical::canonical_key;

use std::sync::Arc;

use serde_json::{Map, Value};

use budget::Regexes;
use geo::Point;
use operand::{Operand, Ordering};
use pattern::{Pattern, Table};

/// Limits applied while compiling, so a hostile `where` cannot cost unbounded work.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Nesting of `$or`/`$and`/`$nor` (the top level counts as 1).
    pub max_depth: usize,
    /// Entries of one `$in`, `$nin`, `$all`, `$containedBy` list or `$polygon`.
    pub max_in_list: usize,
    /// Length in bytes of one `$regex` pattern as written.
    pub max_regex_bytes: usize,
    /// `$regex` patterns in one `where` (each compiles to at most 512 KiB per direction).
    pub max_regexes: usize,
    /// Memory in bytes that all distinct compiled `$regex` patterns live in the process may
    /// account for (see [`pattern::Pattern::memory`]); a query whose new patterns would take
    /// the total past it is refused. Patterns already live are shared and cost nothing new.
    pub max_regex_memory_total: usize,
    /// Memory in bytes the distinct `$regex` patterns of one query may account for, shared or
    /// not ([`Query::regex_memory`]).
    pub max_regex_memory_per_query: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_depth: 10,
            max_in_list: 1_000,
            max_regex_bytes: 1_024,
            max_regexes: 32,
            max_regex_memory_total: 256 << 20,
            max_regex_memory_per_query: 16 << 20,
        }
    }
}

/// A `where` that cannot be subscribed to; the message goes to the client with code 102.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError(pub String);

impl QueryError {
    /// The text sent to the client.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QueryError {}

/// A compiled `where`: a conjunction of nodes.
#[derive(Debug, Clone)]
pub struct Query {
    root: Vec<Node>,
    /// What the distinct `$regex` patterns it holds account for.
    regex_memory: usize,
}

#[derive(Debug, Clone)]
enum Node {
    And(Vec<Vec<Node>>),
    Or(Vec<Vec<Node>>),
    Nor(Vec<Vec<Node>>),
    Field { path: Vec<String>, tests: Vec<Test> },
}

#[derive(Debug, Clone)]
enum Test {
    /// Implicit equality and `$eq`: the value, or an element of an array value, equals.
    Equals(Operand),
    NotEquals(Operand),
    Compare(Ordering, Operand),
    In(Vec<Operand>),
    NotIn(Vec<Operand>),
    /// Every operand equals the value or one of its elements; an empty list matches nothing.
    All(Vec<Operand>),
    /// `$all` of `{"$regex"}` objects (`containsAllStartingWith`): every pattern matches the
    /// value or one of its string elements.
    AllMatch(Vec<Arc<Pattern>>),
    /// Every element of the (array) value is listed.
    ContainedBy(Vec<Operand>),
    Exists(bool),
    Regex(Arc<Pattern>),
    /// Haversine distance in radians at most `max_radians`: `$nearSphere` (infinite without a
    /// `$maxDistance…`) and `$geoWithin`/`$centerSphere`.
    Near {
        center: Point,
        max_radians: f64,
    },
    /// Strictly inside; a box whose southwest is not south-west of its northeast holds nothing.
    WithinBox {
        south_west: Point,
        north_east: Point,
    },
    WithinPolygon(Vec<Point>),
    /// The value is a Polygon containing the point.
    Intersects(Point),
}

const GEO_DISTANCES: [&str; 4] =
    ["$maxDistance", "$maxDistanceInRadians", "$maxDistanceInMiles", "$maxDistanceInKilometers"];

impl Query {
    /// Compiles `where_` within `limits`; its `$regex` patterns come from (and go into) the
    /// process-wide table, shared with every other query using them.
    pub fn compile(where_: &Map<String, Value>, limits: QueryLimits) -> Result<Query, QueryError> {
        Query::compile_in(where_, limits, pattern::shared())
    }

    fn compile_in(
        where_: &Map<String, Value>,
        limits: QueryLimits,
        table: &'static Table,
    ) -> Result<Query, QueryError> {
        let mut regexes = Regexes::new(table);
        let root = compile_conjunction(where_, limits, 1, &mut regexes)?;
        Ok(Query { root, regex_memory: regexes.finish(limits)? })
    }

    /// The memory accounted for by the distinct compiled `$regex` patterns this query holds
    /// (each [`pattern::Pattern::memory`] once, whether or not other queries share it), for a
    /// per-connection budget.
    pub fn regex_memory(&self) -> usize {
        self.regex_memory
    }

    /// Whether `object` (a Parse object as sent to clients) satisfies the query. `$relativeTime`
    /// bounds are taken relative to the moment of this call.
    pub fn matches(&self, object: &Map<String, Value>) -> bool {
        all(&self.root, object)
    }
}

/// `regexes` holds the patterns compiled so far in the whole `where`.
fn compile_conjunction(
    where_: &Map<String, Value>,
    limits: QueryLimits,
    depth: usize,
    regexes: &mut Regexes,
) -> Result<Vec<Node>, QueryError> {
    if depth > limits.max_depth {
        return Err(QueryError(format!(
            "Query condition nesting depth exceeds maximum allowed depth of {}",
            limits.max_depth
        )));
    }
    let mut nodes = Vec::with_capacity(where_.len());
    for (key, constraint) in where_ {
        let node = match key.as_str() {
            "$or" | "$and" | "$nor" => compile_logical(key, constraint, limits, depth, regexes)?,
            k if k.starts_with('$') => return Err(refusal(k)),
            field => compile_field(field, constraint, limits, regexes)?,
        };
        nodes.push(node);
    }
    Ok(nodes)
}

/// `$or`, `$and` or `$nor` (`operator`) at `depth`: a non-empty array of conjunctions.
fn compile_logical(
    operator: &str,
    constraint: &Value,
    limits: QueryLimits,
    depth: usize,
    regexes: &mut Regexes,
) -> Result<Node, QueryError> {
    let Some(branches) = constraint.as_array().filter(|a| !a.is_empty()) else {
        return Err(QueryError(format!("{operator} must be a non-empty array")));
    };
    let mut compiled = Vec::with_capacity(branches.len());
    for branch in branches {
        let Some(branch) = branch.as_object() else {
            return Err(QueryError(format!("{operator} must be an array of objects")));
        };
        compiled.push(compile_conjunction(branch, limits, depth + 1, regexes)?);
    }
    Ok(match operator {
        "$or" => Node::Or(compiled),
        "$and" => Node::And(compiled),
        _ => Node::Nor(compiled),
    })
}

/// Why an operator this matcher does not evaluate is refused.
fn refusal(operator: &str) -> QueryError {
    QueryError(match operator {
        "$relatedTo" | "$inQuery" | "$notInQuery" | "$select" | "$dontSelect" => format!(
            "Unsupported query operator: {operator} — relations and sub-queries cannot be evaluated on a single row"
        ),
        "$text" => {
            "Unsupported query operator: $text — full-text search cannot be evaluated on a single row".to_string()
        }
        "$elemMatch" => format!("Unsupported query operator: {operator}"),
        "$relativeTime" => operand::RELATIVE_TIME_ONLY_IN_RANGES.to_string(),
        _ => format!("Invalid query operator: {operator}"),
    })
}

/// A field's constraint: a value to equal, or operators, each compiled to a test.
fn compile_field(
    field: &str,
    constraint: &Value,
    limits: QueryLimits,
    regexes: &mut Regexes,
) -> Result<Node, QueryError> {
    let path = field_path(field)?;
    let Some(operators) = operators_of(field, constraint)? else {
        let operand = Operand::decode(constraint).map_err(|e| QueryError(format!("{field}: {e}")))?;
        return Ok(Node::Field { path, tests: vec![Test::Equals(operand)] });
    };
    let mut tests = Vec::with_capacity(operators.len());
    for (op, operand) in operators {
        if let Some(test) = compile_operator(field, op, operand, operators, limits, regexes)? {
            tests.push(test);
        }
    }
    Ok(Node::Field { path, tests })
}

/// The segments of a dotted field name, none of them empty.
fn field_path(field: &str) -> Result<Vec<String>, QueryError> {
    if field.split('.').any(str::is_empty) {
        return Err(QueryError(format!("Invalid field name: {field:?}")));
    }
    Ok(field.split('.').map(str::to_string).collect())
}

/// The operators of a constraint, or `None` when the constraint is a value to equal: anything
/// but a non-empty object whose keys all start with `$` (typed values, with `__type`, are values).
fn operators_of<'a>(field: &str, constraint: &'a Value) -> Result<Option<&'a Map<String, Value>>, QueryError> {
    let Some(map) = constraint.as_object().filter(|m| !m.is_empty() && !m.contains_key("__type")) else {
        return Ok(None);
    };
    match map.keys().filter(|k| k.starts_with('$')).count() {
        0 => Ok(None),
        dollar if dollar < map.len() => {
            Err(QueryError(format!("Invalid constraint on {field}: operators mixed with plain keys")))
        }
        _ => Ok(Some(map)),
    }
}

/// One `op: operand` of a field's `operators`; `None` for a modifier (`$options`,
/// `$maxDistance…`), which the operator it modifies reads.
fn compile_operator(
    field: &str,
    op: &str,
    operand: &Value,
    operators: &Map<String, Value>,
    limits: QueryLimits,
    regexes: &mut Regexes,
) -> Result<Option<Test>, QueryError> {
    let fail = failure(field, op);
    let decode = |v: &Value| Operand::decode(v).map_err(fail);
    let bound = |v: &Value| Operand::decode_bound(v).map_err(fail);
    let test = match op {
        "$eq" => Test::Equals(decode(operand)?),
        "$ne" => Test::NotEquals(decode(operand)?),
        "$lt" => Test::Compare(Ordering::Less, bound(operand)?),
        "$lte" => Test::Compare(Ordering::LessOrEqual, bound(operand)?),
        "$gt" => Test::Compare(Ordering::Greater, bound(operand)?),
        "$gte" => Test::Compare(Ordering::GreaterOrEqual, bound(operand)?),
        "$in" | "$nin" | "$all" | "$containedBy" => compile_list(field, op, operand, limits, regexes)?,
        "$exists" => match operand {
            Value::Bool(b) => Test::Exists(*b),
            _ => return Err(QueryError(format!("{field}.$exists must be a boolean"))),
        },
        "$regex" => {
            let options =
                regex_options(operators).ok_or_else(|| QueryError(format!("{field}.$options must be a string")))?;
            Test::Regex(compile_regex(field, operand, options, limits, regexes)?)
        }
        "$nearSphere" => Test::Near {
            center: geo::decode_point(operand).map_err(fail)?,
            max_radians: max_distance(field, operators)?,
        },
        "$within" => compile_box(field, operand)?,
        "$geoWithin" => compile_geo_within(field, operand, limits)?,
        "$geoIntersects" => compile_intersects(field, operand)?,
        "$options" => return modifier(field, op, operators, "$regex"),
        distance if GEO_DISTANCES.contains(&distance) => return modifier(field, op, operators, "$nearSphere"),
        other => return Err(refusal(other)),
    };
    Ok(Some(test))
}

/// How an operator's errors read: `field.op: message`.
fn failure<'a>(field: &'a str, op: &'a str) -> impl Fn(String) -> QueryError + Copy + 'a {
    move |message| QueryError(format!("{field}.{op}: {message}"))
}

/// A modifier is no test of its own, and is valid only next to the operator it modifies.
fn modifier(field: &str, op: &str, operators: &Map<String, Value>, modified: &str) -> Result<Option<Test>, QueryError> {
    if !operators.contains_key(modified) {
        return Err(QueryError(format!("{field}.{op} is only valid with {modified}")));
    }
    Ok(None)
}

/// `$in`, `$nin`, `$containedBy` and `$all`.
fn compile_list(
    field: &str,
    op: &str,
    operand: &Value,
    limits: QueryLimits,
    regexes: &mut Regexes,
) -> Result<Test, QueryError> {
    let list = bounded_list(field, op, operand, limits)?;
    Ok(match op {
        "$in" => Test::In(decode_list(field, op, list)?),
        "$nin" => Test::NotIn(decode_list(field, op, list)?),
        "$containedBy" => Test::ContainedBy(decode_list(field, op, list)?),
        _ => compile_all(field, list, limits, regexes)?,
    })
}

fn bounded_list<'a>(field: &str, op: &str, operand: &'a Value, limits: QueryLimits) -> Result<&'a [Value], QueryError> {
    let Some(list) = operand.as_array() else {
        return Err(QueryError(format!("{field}.{op} must be an array")));
    };
    if list.len() > limits.max_in_list {
        return Err(QueryError(format!(
            "{field}.{op} has {} values, more than the limit of {}",
            list.len(),
            limits.max_in_list
        )));
    }
    Ok(list)
}

fn decode_list(field: &str, op: &str, list: &[Value]) -> Result<Vec<Operand>, QueryError> {
    list.iter().map(Operand::decode).collect::<Result<_, _>>().map_err(failure(field, op))
}

/// `$all`: values, or (Parse's `containsAllStartingWith`) `{"$regex": …}` objects only.
fn compile_all(field: &str, list: &[Value], limits: QueryLimits, regexes: &mut Regexes) -> Result<Test, QueryError> {
    let is_regex = |v: &Value| v.as_object().is_some_and(|m| m.contains_key("$regex"));
    let patterns = list.iter().filter(|v| is_regex(v)).count();
    if patterns == 0 {
        return Ok(Test::All(decode_list(field, "$all", list)?));
    }
    if patterns < list.len() {
        return Err(QueryError(format!("{field}.$all: values must be all {{\"$regex\": …}} objects or none")));
    }
    let mut compiled = Vec::with_capacity(list.len());
    for item in list.iter().filter_map(Value::as_object) {
        if let Some(other) = item.keys().find(|k| *k != "$regex" && *k != "$options") {
            return Err(QueryError(format!("{field}.$all: unexpected key {other} next to $regex")));
        }
        let options =
            regex_options(item).ok_or_else(|| QueryError(format!("{field}.$all: $options must be a string")))?;
        compiled.push(compile_regex(field, item.get("$regex").unwrap_or(&Value::Null), options, limits, regexes)?);
    }
    Ok(Test::AllMatch(compiled))
}

/// The `$options` of the object holding a `$regex` ("" when absent); `None` when not a string.
fn regex_options(map: &Map<String, Value>) -> Option<&str> {
    map.get("$options").map_or(Some(""), Value::as_str)
}

fn compile_regex(
    field: &str,
    pattern: &Value,
    options: &str,
    limits: QueryLimits,
    regexes: &mut Regexes,
) -> Result<Arc<Pattern>, QueryError> {
    let Some(pattern) = pattern.as_str() else {
        return Err(QueryError(format!("{field}.$regex must be a string")));
    };
    regexes.compile(field, pattern, options, limits)
}

/// The `$nearSphere` radius in radians from whichever one `$maxDistance…` is given.
fn max_distance(field: &str, operators: &Map<String, Value>) -> Result<f64, QueryError> {
    let given: Vec<(&str, &Value)> = GEO_DISTANCES.iter().filter_map(|k| operators.get(*k).map(|v| (*k, v))).collect();
    let (key, value) = match given.as_slice() {
        [] => return Ok(f64::INFINITY),
        [one] => *one,
        _ => return Err(QueryError(format!("{field}: give only one of {}", GEO_DISTANCES.join(", ")))),
    };
    let Some(distance) = value.as_f64().filter(|d| *d >= 0.0) else {
        return Err(QueryError(format!("{field}.{key} must be a non-negative number")));
    };
    Ok(match key {
        "$maxDistanceInMiles" => distance / geo::EARTH_RADIUS_MILES,
        "$maxDistanceInKilometers" => distance / geo::EARTH_RADIUS_KILOMETERS,
        _ => distance,
    })
}

/// The value of `{key: value}` when `operand` is an object with exactly that key.
fn single_key<'a>(operand: &'a Value, key: &str) -> Option<&'a Value> {
    let map = operand.as_object().filter(|m| m.len() == 1)?;
    map.get(key)
}

fn compile_box(field: &str, operand: &Value) -> Result<Test, QueryError> {
    let shape =
        || QueryError(format!("{field}.$within must be {{\"$box\": [southwest GeoPoint, northeast GeoPoint]}}"));
    let corners = single_key(operand, "$box").and_then(Value::as_array).ok_or_else(shape)?;
    let [south_west, north_east] = corners.as_slice() else { return Err(shape()) };
    let decode = |v: &Value| geo::decode_point(v).map_err(failure(field, "$within.$box"));
    Ok(Test::WithinBox { south_west: decode(south_west)?, north_east: decode(north_east)? })
}

/// `$geoWithin`: `{"$polygon": …}` or `{"$centerSphere": …}`.
fn compile_geo_within(field: &str, operand: &Value, limits: QueryLimits) -> Result<Test, QueryError> {
    let fail = failure(field, "$geoWithin");
    if let Some(polygon) = single_key(operand, "$polygon") {
        return polygon_vertices(polygon, limits).map(Test::WithinPolygon).map_err(fail);
    }
    if let Some(sphere) = single_key(operand, "$centerSphere") {
        return center_sphere(sphere).map_err(fail);
    }
    Err(fail("must be {\"$polygon\": [GeoPoint…]} or {\"$centerSphere\": [[longitude, latitude], radians]}".into()))
}

/// A `$polygon`: a Polygon, or at least 3 GeoPoints (and at most `max_in_list`).
fn polygon_vertices(polygon: &Value, limits: QueryLimits) -> Result<Vec<Point>, String> {
    if polygon.as_object().is_some() {
        return geo::decode_polygon(polygon);
    }
    let Some(points) = polygon.as_array().filter(|p| p.len() >= 3) else {
        return Err("$polygon must be at least 3 GeoPoints (or a Polygon)".into());
    };
    if points.len() > limits.max_in_list {
        return Err(format!("$polygon has {} points, more than the limit of {}", points.len(), limits.max_in_list));
    }
    points.iter().map(geo::decode_point).collect()
}

/// A `$centerSphere`: `[[longitude, latitude] or GeoPoint, radians]`.
fn center_sphere(sphere: &Value) -> Result<Test, String> {
    const SHAPE: &str = "$centerSphere must be [[longitude, latitude] or GeoPoint, radians]";
    let [center, radians] = sphere.as_array().map(Vec::as_slice).unwrap_or_default() else {
        return Err(SHAPE.into());
    };
    let center = match center.as_array().map(Vec::as_slice) {
        Some([longitude, latitude]) => {
            let (Some(longitude), Some(latitude)) = (longitude.as_f64(), latitude.as_f64()) else {
                return Err(SHAPE.into());
            };
            geo::check_range(latitude, longitude)?
        }
        Some(_) => return Err(SHAPE.into()),
        None => geo::decode_point(center)?,
    };
    let Some(radians) = radians.as_f64().filter(|r| *r >= 0.0) else {
        return Err("$centerSphere radius must be a non-negative number of radians".into());
    };
    Ok(Test::Near { center, max_radians: radians })
}

/// `$geoIntersects`: `{"$point": GeoPoint}`, which a Polygon value must contain.
fn compile_intersects(field: &str, operand: &Value) -> Result<Test, QueryError> {
    let Some(point) = single_key(operand, "$point") else {
        return Err(QueryError(format!("{field}.$geoIntersects must be {{\"$point\": GeoPoint}}")));
    };
    Ok(Test::Intersects(geo::decode_point(point).map_err(failure(field, "$geoIntersects"))?))
}

fn all(nodes: &[Node], object: &Map<String, Value>) -> bool {
    nodes.iter().all(|node| node_matches(node, object))
}

fn node_matches(node: &Node, object: &Map<String, Value>) -> bool {
    match node {
        Node::And(branches) => branches.iter().all(|b| all(b, object)),
        Node::Or(branches) => branches.iter().any(|b| all(b, object)),
        Node::Nor(branches) => !branches.iter().any(|b| all(b, object)),
        Node::Field { path, tests } => {
            let value = resolve(object, path);
            tests.iter().all(|test| test_matches(test, value))
        }
    }
}

/// The value at a dotted path; a missing or scalar parent means a missing value. A segment
/// indexes an array when it is a number (`tags.0`), as JavaScript property access does.
fn resolve<'a>(object: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(object.get(first)?, |value, key| step(value, key))
}

/// The top-level field names a `where` constrains, anywhere inside `$or`/`$and`/`$nor` (the root
/// of a dotted path), so that access rules can refuse queries that would probe hidden fields.
pub fn referenced_fields(where_: &Map<String, Value>) -> Vec<String> {
    let mut fields = Vec::new();
    for (key, value) in where_ {
        match key.as_str() {
            "$or" | "$and" | "$nor" => {
                for clause in value.as_array().into_iter().flatten().filter_map(Value::as_object) {
                    fields.extend(referenced_fields(clause));
                }
            }
            _ => fields.push(key.split('.').next().unwrap_or(key).to_string()),
        }
    }
    fields
}

/// The value at a dotted `path` (`"a.b.0"`) exactly as the matcher reads it, for code that must
/// agree with it (such as an index that pre-filters queries by the values of a field).
pub fn resolve_path<'a>(object: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut keys = path.split('.');
    let first = object.get(keys.next()?)?;
    keys.try_fold(first, |value, key| step(value, key))
}

fn step<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map.get(key),
        Value::Array(items) => items.get(array_index(key)?),
        _ => None,
    }
}

/// A canonical array index as JavaScript reads property names: digits, no sign, no leading zero.
fn array_index(key: &str) -> Option<usize> {
    let canonical = key.bytes().all(|b| b.is_ascii_digit()) && (key == "0" || !key.starts_with('0'));
    if canonical {
        key.parse().ok()
    } else {
        None
    }
}

/// The value itself, then (for arrays) each element: the candidates "any element" semantics
/// tests against.
fn candidates(value: &Value) -> impl Iterator<Item = &Value> {
    std::iter::once(value).chain(value.as_array().into_iter().flatten())
}

/// A missing value satisfies nothing; otherwise the value or any element must.
fn any_candidate(value: Option<&Value>, test: impl Fn(&Value) -> bool) -> bool {
    value.is_some_and(|v| candidates(v).any(test))
}

/// A string value, or a string element, matches.
fn regex_matches(regex: &Pattern, value: Option<&Value>) -> bool {
    any_candidate(value, |c| c.as_str().is_some_and(|s| regex.is_match(s)))
}

/// A GeoPoint value, or a GeoPoint element, satisfies `test`.
fn any_point(value: Option<&Value>, test: impl Fn(Point) -> bool) -> bool {
    any_candidate(value, |c| geo::point_of(c).is_some_and(&test))
}

fn listed(list: &[Operand], value: Option<&Value>) -> bool {
    match value {
        None => list.iter().any(|operand| matches!(operand, Operand::Null)),
        Some(v) => candidates(v).any(|c| list.iter().any(|operand| operand.listed(c))),
    }
}

fn test_matches(test: &Test, value: Option<&Value>) -> bool {
    match test {
        Test::Equals(operand) => equals(operand, value),
        Test::NotEquals(operand) => !equals(operand, value),
        Test::Compare(ordering, operand) => {
            any_candidate(value, |c| operand.compare(c).is_some_and(|o| ordering.accepts(o)))
        }
        Test::In(list) => listed(list, value),
        Test::NotIn(list) => !listed(list, value),
        Test::All(list) => !list.is_empty() && list.iter().all(|operand| equals(operand, value)),
        Test::AllMatch(regexes) => regexes.iter().all(|regex| regex_matches(regex, value)),
        Test::ContainedBy(list) => value
            .and_then(Value::as_array)
            .is_some_and(|items| items.iter().all(|item| list.iter().any(|operand| operand.listed(item)))),
        Test::Exists(expected) => value.is_some() == *expected,
        Test::Regex(regex) => regex_matches(regex, value),
        Test::Near { center, max_radians } => any_point(value, |p| geo::haversine(*center, p) <= *max_radians),
        Test::WithinBox { south_west: (south, west), north_east: (north, east) } => {
            south <= north
                && west <= east
                && any_point(value, |(lat, lng)| *south < lat && lat < *north && *west < lng && lng < *east)
        }
        Test::WithinPolygon(vertices) => any_point(value, |p| geo::polygon_contains(vertices, p)),
        Test::Intersects(point) => any_candidate(value, |c| {
            geo::polygon_of(c).is_some_and(|vertices| geo::polygon_contains(&vertices, *point))
        }),
    }
}

fn equals(operand: &Operand, value: Option<&Value>) -> bool {
    match value {
        None => matches!(operand, Operand::Null),
        Some(v) => candidates(v).any(|c| operand.equals(c)),
    }
}

#[cfg(test)]
mod tests;
