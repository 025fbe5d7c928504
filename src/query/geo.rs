//! GeoPoints and Polygons: reading them from constraints (strictly) and from objects (leniently),
//! and the two algorithms Parse's SDK uses — haversine distance and ray-casting point in polygon —
//! so that boundaries fall where Parse puts them.

use serde_json::Value;

use crate::value::{type_tag, untagged_or};

/// A point as (latitude, longitude) in degrees.
pub type Point = (f64, f64);

/// Mean Earth radius Parse's SDK uses for `withinMiles`.
pub const EARTH_RADIUS_MILES: f64 = 3958.8;
/// Mean Earth radius Parse's SDK uses for `withinKilometers`.
pub const EARTH_RADIUS_KILOMETERS: f64 = 6371.0;

/// A GeoPoint of an object: `{"__type":"GeoPoint","latitude":…,"longitude":…}`, or the same
/// without `__type` (how Parse's SDK constructs one from plain JSON). Any other value: `None`.
pub fn point_of(value: &Value) -> Option<Point> {
    let map = value.as_object().filter(|m| untagged_or(m, &["GeoPoint"]))?;
    Some((map.get("latitude")?.as_f64()?, map.get("longitude")?.as_f64()?))
}

/// A tagged GeoPoint only (equality is type-strict).
pub fn tagged_point_of(value: &Value) -> Option<Point> {
    if type_tag(value) == Some("GeoPoint") {
        point_of(value)
    } else {
        None
    }
}

/// A GeoPoint in a constraint: numbers in range, as Parse's SDK validates them.
pub fn decode_point(value: &Value) -> Result<Point, String> {
    let Some((latitude, longitude)) = point_of(value) else {
        return Err("invalid GeoPoint: latitude and longitude must be numbers".into());
    };
    check_range(latitude, longitude)
}

/// A point whose coordinates are in range.
pub fn check_range(latitude: f64, longitude: f64) -> Result<Point, String> {
    if !(-90.0..=90.0).contains(&latitude) {
        return Err(format!("invalid GeoPoint: latitude {latitude} is outside [-90, 90]"));
    }
    if !(-180.0..=180.0).contains(&longitude) {
        return Err(format!("invalid GeoPoint: longitude {longitude} is outside [-180, 180]"));
    }
    Ok((latitude, longitude))
}

/// `[latitude, longitude]`, the vertex form of a Polygon's `coordinates`.
fn pair_of(value: &Value) -> Option<Point> {
    match value.as_array()?.as_slice() {
        [latitude, longitude] => Some((latitude.as_f64()?, longitude.as_f64()?)),
        _ => None,
    }
}

/// The vertices of a Polygon value (`{"__type":"Polygon","coordinates":[[lat, lng]…]}`), when it
/// is one with at least three vertices.
pub fn polygon_of(value: &Value) -> Option<Vec<Point>> {
    if type_tag(value) != Some("Polygon") {
        return None;
    }
    let coordinates = value.as_object()?.get("coordinates")?.as_array()?;
    if coordinates.len() < 3 {
        return None;
    }
    coordinates.iter().map(pair_of).collect()
}

/// A Polygon in a constraint: at least three `[latitude, longitude]` pairs in range.
pub fn decode_polygon(value: &Value) -> Result<Vec<Point>, String> {
    const SHAPE: &str = "invalid Polygon: coordinates must be at least 3 [latitude, longitude] pairs";
    let coordinates = value.as_object().and_then(|m| m.get("coordinates")).and_then(Value::as_array).ok_or(SHAPE)?;
    if coordinates.len() < 3 {
        return Err(SHAPE.into());
    }
    let mut vertices = Vec::with_capacity(coordinates.len());
    for pair in coordinates {
        let (latitude, longitude) = pair_of(pair).ok_or(SHAPE)?;
        vertices.push(check_range(latitude, longitude)?);
    }
    Ok(vertices)
}

/// Great-circle distance in radians (Parse SDK `GeoPoint.radiansTo`).
pub fn haversine(a: Point, b: Point) -> f64 {
    let to_radians = std::f64::consts::PI / 180.0;
    let (lat1, lng1) = (a.0 * to_radians, a.1 * to_radians);
    let (lat2, lng2) = (b.0 * to_radians, b.1 * to_radians);
    let sin_lat = ((lat1 - lat2) / 2.0).sin();
    let sin_lng = ((lng1 - lng2) / 2.0).sin();
    let h = (sin_lat * sin_lat + lat1.cos() * lat2.cos() * sin_lng * sin_lng).clamp(0.0, 1.0);
    2.0 * h.sqrt().asin()
}

/// Ray casting on (latitude, longitude) pairs with a bounding-box pre-check, edge for edge as
/// Parse's SDK `Polygon.containsPoint` does it.
pub fn polygon_contains(vertices: &[Point], point: Point) -> bool {
    let (Some(&first), Some(&last)) = (vertices.first(), vertices.last()) else { return false };
    let (mut min_lat, mut max_lat, mut min_lng, mut max_lng) = (first.0, first.0, first.1, first.1);
    for &(lat, lng) in vertices {
        min_lat = min_lat.min(lat);
        max_lat = max_lat.max(lat);
        min_lng = min_lng.min(lng);
        max_lng = max_lng.max(lng);
    }
    let (lat, lng) = point;
    if lat < min_lat || lat > max_lat || lng < min_lng || lng > max_lng {
        return false;
    }
    let mut inside = false;
    let mut previous = last;
    for &current in vertices {
        let (start_lat, start_lng) = current;
        let (end_lat, end_lng) = previous;
        let crosses = (start_lng > lng) != (end_lng > lng)
            && lat < (end_lat - start_lat) * (lng - start_lng) / (end_lng - start_lng) + start_lat;
        if crosses {
            inside = !inside;
        }
        previous = current;
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_matches_known_distances() {
        assert_eq!(haversine((10.0, 20.0), (10.0, 20.0)), 0.0);
        // A quarter of a great circle.
        assert!((haversine((0.0, 0.0), (0.0, 90.0)) - std::f64::consts::FRAC_PI_2).abs() < 1e-12);
        assert!((haversine((90.0, 0.0), (-90.0, 0.0)) - std::f64::consts::PI).abs() < 1e-12);
        // San Francisco → Los Angeles ≈ 559 km.
        let km = haversine((37.7749, -122.4194), (34.0522, -118.2437)) * EARTH_RADIUS_KILOMETERS;
        assert!((km - 559.0).abs() < 2.0, "{km}");
    }

    #[test]
    fn polygon_contains_like_the_sdk() {
        let square = [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0)];
        assert!(polygon_contains(&square, (0.5, 0.5)));
        assert!(!polygon_contains(&square, (1.5, 0.5)));
        assert!(!polygon_contains(&square, (0.5, -0.1)));
        assert!(!polygon_contains(&[], (0.0, 0.0)));
        // Degenerate (all on one line): never inside, never a panic.
        assert!(!polygon_contains(&[(0.0, 0.0), (0.0, 0.0), (0.0, 0.0)], (0.0, 0.0)));
    }
}
