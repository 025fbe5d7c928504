//! Parse `where` JSON → a compiled query, and the matcher that evaluates it on one object.
//! Pure and total: compiling validates the whole `where` and refuses what it cannot evaluate
//! (code 102, naming the problem); matching never fails and never panics, and costs time linear
//! in the query and the object (regular expressions use the `regex` crate: no backtracking).
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
//! Submodules: `operand` (constraint values and equality), `pattern` (`$regex`), `geo`
//! (haversine and point in polygon as Parse's SDK computes them), `canonical` (dedupe key).

mod canonical;
mod geo;
mod operand;
mod pattern;

pub use canonical::canonical_key;

use regex::Regex;
use serde_json::{Map, Value};

use geo::Point;
use operand::{Operand, Ordering};

/// Limits applied while compiling, so a hostile `where` cannot cost unbounded work.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Nesting of `$or`/`$and`/`$nor` (the top level counts as 1).
    pub max_depth: usize,
    /// Entries of one `$in`, `$nin`, `$all`, `$containedBy` list or `$polygon`.
    pub max_in_list: usize,
    /// Length in bytes of one `$regex` pattern as written.
    pub max_regex_bytes: usize,
    /// `$regex` patterns in one `where` (each may compile to up to 512 KiB).
    pub max_regexes: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits { max_depth: 10, max_in_list: 1_000, max_regex_bytes: 1_024, max_regexes: 32 }
    }
}

/// A `where` that cannot be subscribed to; the message goes to the client with code 102.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError(pub String);

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A compiled `where`: a conjunction of nodes.
#[derive(Debug, Clone)]
pub struct Query {
    root: Vec<Node>,
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
    AllMatch(Vec<Regex>),
    /// Every element of the (array) value is listed.
    ContainedBy(Vec<Operand>),
    Exists(bool),
    Regex(Regex),
    /// Haversine distance in radians at most `max_radians` (infinite when not given).
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
    WithinSphere {
        center: Point,
        radians: f64,
    },
    /// The value is a Polygon containing the point.
    Intersects(Point),
}

const GEO_DISTANCES: [&str; 4] =
    ["$maxDistance", "$maxDistanceInRadians", "$maxDistanceInMiles", "$maxDistanceInKilometers"];

impl Query {
    pub fn compile(where_: &Map<String, Value>, limits: QueryLimits) -> Result<Query, QueryError> {
        Ok(Query { root: compile_conjunction(where_, limits, 1, &mut 0)? })
    }

    /// Whether `object` (a Parse object as sent to clients) satisfies the query. `$relativeTime`
    /// bounds are taken relative to the moment of this call.
    pub fn matches(&self, object: &Map<String, Value>) -> bool {
        all(&self.root, object)
    }
}

/// `regexes` counts the patterns compiled so far in the whole `where`.
fn compile_conjunction(
    where_: &Map<String, Value>,
    limits: QueryLimits,
    depth: usize,
    regexes: &mut usize,
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
            "$or" | "$and" | "$nor" => {
                let Some(branches) = constraint.as_array().filter(|a| !a.is_empty()) else {
                    return Err(QueryError(format!("{key} must be a non-empty array")));
                };
                let mut compiled = Vec::with_capacity(branches.len());
                for branch in branches {
                    let Some(branch) = branch.as_object() else {
                        return Err(QueryError(format!("{key} must be an array of objects")));
                    };
                    compiled.push(compile_conjunction(branch, limits, depth + 1, regexes)?);
                }
                match key.as_str() {
                    "$or" => Node::Or(compiled),
                    "$and" => Node::And(compiled),
                    _ => Node::Nor(compiled),
                }
            }
            k if k.starts_with('$') => return Err(refusal(k)),
            field => compile_field(field, constraint, limits, regexes)?,
        };
        nodes.push(node);
    }
    Ok(nodes)
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

fn compile_field(
    field: &str,
    constraint: &Value,
    limits: QueryLimits,
    regexes: &mut usize,
) -> Result<Node, QueryError> {
    if field.is_empty() || field.split('.').any(str::is_empty) {
        return Err(QueryError(format!("Invalid field name: {field:?}")));
    }
    let path: Vec<String> = field.split('.').map(str::to_string).collect();
    let operators = match constraint {
        Value::Object(map) if !map.is_empty() && !map.contains_key("__type") => {
            let dollar = map.keys().filter(|k| k.starts_with('$')).count();
            if dollar == 0 {
                None
            } else if dollar < map.len() {
                return Err(QueryError(format!("Invalid constraint on {field}: operators mixed with plain keys")));
            } else {
                Some(map)
            }
        }
        _ => None,
    };
    let Some(operators) = operators else {
        let operand = Operand::decode(constraint).map_err(|e| QueryError(format!("{field}: {e}")))?;
        return Ok(Node::Field { path, tests: vec![Test::Equals(operand)] });
    };
    let mut tests = Vec::with_capacity(operators.len());
    for (op, operand) in operators {
        let fail = |message: String| QueryError(format!("{field}.{op}: {message}"));
        let decode = |v: &Value| Operand::decode(v).map_err(fail);
        let test = match op.as_str() {
            "$eq" => Test::Equals(decode(operand)?),
            "$ne" => Test::NotEquals(decode(operand)?),
            "$lt" | "$lte" | "$gt" | "$gte" => {
                let ordering = match op.as_str() {
                    "$lt" => Ordering::Less,
                    "$lte" => Ordering::LessOrEqual,
                    "$gt" => Ordering::Greater,
                    _ => Ordering::GreaterOrEqual,
                };
                Test::Compare(ordering, Operand::decode_bound(operand).map_err(fail)?)
            }
            "$in" | "$nin" | "$all" | "$containedBy" => {
                let list = bounded_list(field, op, operand, limits)?;
                match op.as_str() {
                    "$in" => Test::In(list.iter().map(decode).collect::<Result<_, _>>()?),
                    "$nin" => Test::NotIn(list.iter().map(decode).collect::<Result<_, _>>()?),
                    "$containedBy" => Test::ContainedBy(list.iter().map(decode).collect::<Result<_, _>>()?),
                    _ => compile_all(field, list, limits, regexes)?,
                }
            }
            "$exists" => match operand {
                Value::Bool(b) => Test::Exists(*b),
                _ => return Err(QueryError(format!("{field}.$exists must be a boolean"))),
            },
            "$regex" => {
                let options = match operators.get("$options") {
                    None => "",
                    Some(Value::String(options)) => options.as_str(),
                    Some(_) => return Err(QueryError(format!("{field}.$options must be a string"))),
                };
                Test::Regex(compile_regex(field, operand, options, limits, regexes)?)
            }
            "$options" => {
                if !operators.contains_key("$regex") {
                    return Err(QueryError(format!("{field}.$options is only valid with $regex")));
                }
                continue;
            }
            "$nearSphere" => Test::Near {
                center: geo::decode_point(operand).map_err(fail)?,
                max_radians: max_distance(field, operators)?,
            },
            distance if GEO_DISTANCES.contains(&distance) => {
                if !operators.contains_key("$nearSphere") {
                    return Err(QueryError(format!("{field}.{distance} is only valid with $nearSphere")));
                }
                continue;
            }
            "$within" => compile_box(field, operand)?,
            "$geoWithin" => compile_geo_within(field, operand, limits)?,
            "$geoIntersects" => {
                let point = single_key(operand, "$point")
                    .ok_or_else(|| QueryError(format!("{field}.$geoIntersects must be {{\"$point\": GeoPoint}}")))?;
                Test::Intersects(
                    geo::decode_point(point).map_err(|e| QueryError(format!("{field}.$geoIntersects: {e}")))?,
                )
            }
            other => return Err(refusal(other)),
        };
        tests.push(test);
    }
    Ok(Node::Field { path, tests })
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

/// `$all`: values, or (Parse's `containsAllStartingWith`) `{"$regex": …}` objects only.
fn compile_all(field: &str, list: &[Value], limits: QueryLimits, regexes: &mut usize) -> Result<Test, QueryError> {
    let is_regex = |v: &Value| v.as_object().is_some_and(|m| m.contains_key("$regex"));
    let patterns = list.iter().filter(|v| is_regex(v)).count();
    if patterns == 0 {
        let operands = list.iter().map(Operand::decode).collect::<Result<_, _>>();
        return Ok(Test::All(operands.map_err(|e| QueryError(format!("{field}.$all: {e}")))?));
    }
    if patterns < list.len() {
        return Err(QueryError(format!("{field}.$all: values must be all {{\"$regex\": …}} objects or none")));
    }
    let mut compiled = Vec::with_capacity(list.len());
    for item in list.iter().filter_map(Value::as_object) {
        if let Some(other) = item.keys().find(|k| *k != "$regex" && *k != "$options") {
            return Err(QueryError(format!("{field}.$all: unexpected key {other} next to $regex")));
        }
        let options = match item.get("$options") {
            None => "",
            Some(Value::String(options)) => options.as_str(),
            Some(_) => return Err(QueryError(format!("{field}.$all: $options must be a string"))),
        };
        compiled.push(compile_regex(field, item.get("$regex").unwrap_or(&Value::Null), options, limits, regexes)?);
    }
    Ok(Test::AllMatch(compiled))
}

fn compile_regex(
    field: &str,
    pattern: &Value,
    options: &str,
    limits: QueryLimits,
    regexes: &mut usize,
) -> Result<Regex, QueryError> {
    let Some(pattern) = pattern.as_str() else {
        return Err(QueryError(format!("{field}.$regex must be a string")));
    };
    *regexes += 1;
    if *regexes > limits.max_regexes {
        return Err(QueryError(format!(
            "{field}.$regex: more than {} regular expressions in one query",
            limits.max_regexes
        )));
    }
    pattern::compile(pattern, options, limits.max_regex_bytes).map_err(|e| QueryError(format!("{field}.$regex: {e}")))
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
    let decode = |v: &Value| geo::decode_point(v).map_err(|e| QueryError(format!("{field}.$within.$box: {e}")));
    Ok(Test::WithinBox { south_west: decode(south_west)?, north_east: decode(north_east)? })
}

fn compile_geo_within(field: &str, operand: &Value, limits: QueryLimits) -> Result<Test, QueryError> {
    let fail = |message: String| QueryError(format!("{field}.$geoWithin: {message}"));
    if let Some(polygon) = single_key(operand, "$polygon") {
        if polygon.as_object().is_some() {
            return Ok(Test::WithinPolygon(geo::decode_polygon(polygon).map_err(fail)?));
        }
        let points = polygon.as_array().filter(|p| p.len() >= 3);
        let Some(points) = points else {
            return Err(fail("$polygon must be at least 3 GeoPoints (or a Polygon)".into()));
        };
        if points.len() > limits.max_in_list {
            return Err(fail(format!(
                "$polygon has {} points, more than the limit of {}",
                points.len(),
                limits.max_in_list
            )));
        }
        let vertices = points.iter().map(geo::decode_point).collect::<Result<_, _>>().map_err(fail)?;
        return Ok(Test::WithinPolygon(vertices));
    }
    if let Some(sphere) = single_key(operand, "$centerSphere") {
        let shape = || fail("$centerSphere must be [[longitude, latitude] or GeoPoint, radians]".into());
        let [center, radians] = sphere.as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err(shape());
        };
        let center = match center.as_array().map(Vec::as_slice) {
            Some([longitude, latitude]) => {
                let (Some(longitude), Some(latitude)) = (longitude.as_f64(), latitude.as_f64()) else {
                    return Err(shape());
                };
                geo::check_range(latitude, longitude).map_err(fail)?
            }
            Some(_) => return Err(shape()),
            None => geo::decode_point(center).map_err(fail)?,
        };
        let Some(radians) = radians.as_f64().filter(|r| *r >= 0.0) else {
            return Err(fail("$centerSphere radius must be a non-negative number of radians".into()));
        };
        return Ok(Test::WithinSphere { center, radians });
    }
    Err(fail("must be {\"$polygon\": [GeoPoint…]} or {\"$centerSphere\": [[longitude, latitude], radians]}".into()))
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
        Test::AllMatch(regexes) => {
            regexes.iter().all(|regex| any_candidate(value, |c| c.as_str().is_some_and(|s| regex.is_match(s))))
        }
        Test::ContainedBy(list) => value
            .and_then(Value::as_array)
            .is_some_and(|items| items.iter().all(|item| list.iter().any(|operand| operand.listed(item)))),
        Test::Exists(expected) => value.is_some() == *expected,
        Test::Regex(regex) => any_candidate(value, |c| c.as_str().is_some_and(|s| regex.is_match(s))),
        Test::Near { center, max_radians } => {
            any_candidate(value, |c| geo::point_of(c).is_some_and(|p| geo::haversine(*center, p) <= *max_radians))
        }
        Test::WithinBox { south_west: (south, west), north_east: (north, east) } => {
            south <= north
                && west <= east
                && any_candidate(value, |c| {
                    geo::point_of(c)
                        .is_some_and(|(lat, lng)| *south < lat && lat < *north && *west < lng && lng < *east)
                })
        }
        Test::WithinPolygon(vertices) => {
            any_candidate(value, |c| geo::point_of(c).is_some_and(|p| geo::polygon_contains(vertices, p)))
        }
        Test::WithinSphere { center, radians } => {
            any_candidate(value, |c| geo::point_of(c).is_some_and(|p| geo::haversine(*center, p) <= *radians))
        }
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
