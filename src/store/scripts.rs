//! The Redis scripts: each store update is one atomic script on one card's keys (one Cluster
//! slot). `TOKEN_MERGE` is the Lua twin of `domain::merge_tokens`; the store test suite runs the
//! same cases against Redis and the in-memory store, which uses the Rust original.

/// `encode`: cjson with a guard. cjson writes numbers with 14 significant digits, so an integer
/// at or above 10^14 would be written rounded (`1e+14`) and the value would no longer read: such
/// a write fails with `C2P_REFUSED` instead, and nothing is written. The Rust side refuses the
/// same values before calling (`domain::STORE_INTEGER_LIMIT`); this is the backstop.
const ENCODE: &str = r#"
local function check_numbers(v)
  if type(v) == 'number' then
    if v ~= math.floor(v) or v >= 1e14 or v <= -1e14 then
      error({err = 'C2P_REFUSED a number cjson would round: ' .. string.format('%.17g', v)})
    end
  elseif type(v) == 'table' then
    for _, x in pairs(v) do check_numbers(x) end
  end
end
local function encode(v)
  check_numbers(v)
  return cjson.encode(v)
end
"#;

/// Shared Lua helpers: last-writer-wins registers, versions ordered by `(at_ms, by)`.
const TOKEN_MERGE: &str = r#"
local function present(v) return v ~= nil and v ~= cjson.null end
local function newer(a, b)
  if not present(a) then return false end
  if not present(b) then return true end
  if a.at_ms ~= b.at_ms then return a.at_ms > b.at_ms end
  return a.by > b.by
end
local function updated(t)
  local m = nil
  for _, v in ipairs({t.status_version, t.decision_version}) do
    if present(v) and (m == nil or v.at_ms > m) then m = v.at_ms end
  end
  return m
end
-- Merges `other` into `base`; returns the token and whether it changed.
local function merge_tokens(base, other)
  if base.token_unique_reference ~= other.token_unique_reference then
    local bu, ou = updated(base), updated(other)
    if ou ~= nil and (bu == nil or ou > bu) then return other, true end
    return base, false
  end
  local changed = false
  if newer(other.status_version, base.status_version) then
    base.status = other.status
    base.status_version = other.status_version
    changed = true
  end
  if newer(other.decision_version, base.decision_version) then
    base.decision = other.decision
    base.decision_version = other.decision_version
    changed = true
  end
  return base, changed
end
"#;

/// KEYS: record, dedup marker. ARGV: the event's token JSON, event time (ms), card id, record
/// TTL (ms), dedup TTL (ms), change channel. Returns {'duplicate'} | {'stale'} | {'applied', json}.
pub fn apply_notification() -> String {
    format!(
        "{ENCODE}{TOKEN_MERGE}{}",
        r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return {'duplicate'} end
local incoming = cjson.decode(ARGV[1])
local at = tonumber(ARGV[2])
local raw = redis.call('GET', KEYS[1])
local record
if not raw then
  record = {
    card_contract_id = tonumber(ARGV[3]), program = '', state = 'IN_PROGRESS',
    src_digital_card_id = cjson.null, src_consumer_id = cjson.null, src_correlation_id = cjson.null,
    masked_card = cjson.null, token = incoming, failure = cjson.null,
    created_at_ms = at, updated_at_ms = at
  }
else
  record = cjson.decode(raw)
  local changed
  if present(record.token) then
    record.token, changed = merge_tokens(record.token, incoming)
  else
    record.token, changed = incoming, true
  end
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
  if not changed then return {'stale'} end
  if at > record.updated_at_ms then record.updated_at_ms = at end
  if at < record.created_at_ms then record.created_at_ms = at end
end
local out = encode(record)
redis.call('SET', KEYS[1], out, 'PX', ARGV[4])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
redis.call('PUBLISH', ARGV[6], out)
return {'applied', out}
"#
    )
}

/// KEYS: record. ARGV: record JSON, TTL (ms), change channel, mode (`merge` | `if_absent`).
/// Returns the stored JSON.
pub fn put_enrollment() -> String {
    format!(
        "{ENCODE}{TOKEN_MERGE}{}",
        r#"
local raw = redis.call('GET', KEYS[1])
if raw and ARGV[4] == 'if_absent' then return raw end
local record = cjson.decode(ARGV[1])
if raw then
  local existing = cjson.decode(raw)
  if present(existing.token) then
    if present(record.token) then
      record.token = merge_tokens(existing.token, record.token)
    else
      record.token = existing.token
    end
  end
  if existing.created_at_ms < record.created_at_ms then record.created_at_ms = existing.created_at_ms end
end
local out = encode(record)
redis.call('SET', KEYS[1], out, 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], out)
return out
"#
    )
}

/// KEYS: idempotency record. ARGV: proposal JSON, fingerprint, now (ms), TTL (ms).
/// Returns {'new', json} | {'resume', json} | {'replay', json} | {'in_flight', ms} | {'reused'}.
pub fn idempotency_begin() -> String {
    format!(
        "{ENCODE}{}",
        r#"
local raw = redis.call('GET', KEYS[1])
if not raw then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
  return {'new', ARGV[1]}
end
local r = cjson.decode(raw)
if r.fingerprint ~= ARGV[2] then return {'reused'} end
if r.outcome ~= nil and r.outcome ~= cjson.null then return {'replay', raw} end
local now = tonumber(ARGV[3])
if r.lease_until_ms > now then return {'in_flight', tostring(r.lease_until_ms - now)} end
local proposal = cjson.decode(ARGV[1])
r.owner = proposal.owner
r.lease_until_ms = proposal.lease_until_ms
local out = encode(r)
redis.call('SET', KEYS[1], out, 'PX', ARGV[4])
return {'resume', out}
"#
    )
}

/// KEYS: card lock. ARGV: owner, TTL (ms). Takes or renews the lock; 1 when `owner` holds it.
pub const LOCK_CARD: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// KEYS: card lock. ARGV: owner. Deletes the lock only if `owner` holds it.
pub const UNLOCK_CARD: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#;

/// KEYS: idempotency record. ARGV: owner, record JSON, TTL (ms). Writes only for the owner
/// (a fence against a stalled caller whose lease was taken over). Returns 1 or 0.
pub const IDEMPOTENCY_UPDATE: &str = r#"
local raw = redis.call('GET', KEYS[1])
if raw then
  local r = cjson.decode(raw)
  if r.owner ~= ARGV[1] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"#;
