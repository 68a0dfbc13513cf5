//! The Redis scripts: each store update is one atomic script on one card's keys (one Cluster
//! slot). `TOKEN_MERGE` is the Lua twin of `domain::merge_tokens` and `apply_notification` of
//! `domain::merge`; the store test suite and the property tests (`tests/it/merge_props.rs`) run
//! the same cases against Redis, a Redis in a non-C locale, a Cluster and the in-memory store,
//! which uses the Rust originals, and compare the records byte for byte.

/// `encode`: cjson with a guard. cjson writes numbers with 14 significant digits, so an integer
/// at or above 10^14 would be written rounded (`1e+14`) and the value would no longer read: such
/// a write fails with `C2P_REFUSED` instead, and nothing is written. The Rust side refuses the
/// same values before calling (`domain::STORE_INTEGER_LIMIT`); this is the backstop.
const ENCODE: &str = r#"
-- Hot (every record written): the globals it calls are locals, numbers checked in the loop.
local floor, lua_type = math.floor, type
local function check_number(x)
  if x ~= floor(x) or x >= 1e14 or x <= -1e14 then
    error({err = 'C2P_REFUSED a number cjson would round: ' .. string.format('%.17g', x)})
  end
end
local function check_numbers(v)
  local t = lua_type(v)
  if t == 'number' then
    check_number(v)
  elseif t == 'table' then
    for _, x in pairs(v) do
      local tx = lua_type(x)
      if tx == 'number' then
        if x ~= floor(x) or x >= 1e14 or x <= -1e14 then check_number(x) end
      elseif tx == 'table' then
        check_numbers(x)
      end
    end
  end
end
local function encode(v)
  check_numbers(v)
  return cjson.encode(v)
end
"#;

/// Shared Lua helpers, the twin of `domain::merge_tokens` (same order, same ranks, same
/// projection): each register keeps its greatest write by (event time, token reference bytes,
/// token requestor bytes, value rank, notification id bytes). Strings are compared byte by byte
/// with `string.byte`: Lua's `<` on strings follows the server's LC_COLLATE (strcoll).
const TOKEN_MERGE: &str = r#"
local function present(v) return v ~= nil and v ~= cjson.null end
-- -1, 0 or 1 as a is before, equal to or after b, byte by byte (as Rust orders strings).
local function cmp_bytes(a, b)
  if a == b then return 0 end
  local la, lb = #a, #b
  for i = 1, math.min(la, lb) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      if x < y then return -1 end
      return 1
    end
  end
  if la < lb then return -1 end
  return 1
end
local function cmp_numbers(a, b)
  if a == b then return 0 end
  if a < b then return -1 end
  return 1
end
local STATUS_RANK = {PENDING = 0, INACTIVE = 1, ACTIVE = 2, SUSPENDED = 3, DEACTIVATED = 4}
local DECISION_RANK = {APPROVED = 0, REQUIRE_ADDITIONAL_AUTHENTICATION = 1, DECLINED = 2}
local function rank(ranks, value)
  if present(value) and ranks[value] ~= nil then return ranks[value] end
  return -1
end
-- A write's token and time: (at_ms, token reference, token requestor).
local function cmp_identity(a, b)
  local c = cmp_numbers(a.version.at_ms, b.version.at_ms)
  if c ~= 0 then return c end
  c = cmp_bytes(a.ref, b.ref)
  if c ~= 0 then return c end
  return cmp_bytes(a.req, b.req)
end
-- The total order of writes: identity, then the value's rank, then the notification id.
local function cmp_write(a, b)
  local c = cmp_identity(a, b)
  if c ~= 0 then return c end
  c = cmp_numbers(a.rank, b.rank)
  if c ~= 0 then return c end
  return cmp_bytes(a.version.by, b.version.by)
end
-- Keeps the greater write of register `reg` (the current one on a tie: equal keys are equal
-- writes); notes whether `other` gave it.
local function offer(acc, reg, w)
  local cur = acc[reg]
  if cur == nil or cmp_write(w, cur) > 0 then acc[reg] = w end
end
-- Adds the writes `t` holds (its own and its superseded token's), marked with `side`.
local function collect(acc, t, side)
  local ref, req = t.token_unique_reference, t.token_requestor_id
  if present(t.status_version) then
    offer(acc, 'status', {ref = ref, req = req, value = t.status, version = t.status_version,
      rank = rank(STATUS_RANK, t.status), side = side})
  end
  if present(t.decision_version) then
    offer(acc, 'decision', {ref = ref, req = req, value = t.decision,
      version = t.decision_version, rank = rank(DECISION_RANK, t.decision), side = side})
  end
  if not present(t.status_version) and not present(t.decision_version) then
    local b = acc.bare
    local greater = b == nil
    if not greater then
      local c = cmp_bytes(ref, b.ref)
      greater = c > 0 or (c == 0 and cmp_bytes(req, b.req) > 0)
    end
    if greater then acc.bare = {ref = ref, req = req, side = side} end
  end
  if present(t.superseded) then collect(acc, t.superseded, side) end
end
local function empty_token(ref, req)
  return {token_unique_reference = ref, token_requestor_id = req, status = cjson.null,
    status_version = cjson.null, decision = cjson.null, decision_version = cjson.null}
end
-- The token the writes show: the latest write's token with its registers, the other register's
-- write kept in `superseded` when it is about another token.
local function project(acc)
  local s, d = acc.status, acc.decision
  local top = s
  if top == nil or (d ~= nil and cmp_identity(d, s) > 0) then top = d end
  if top == nil then return empty_token(acc.bare.ref, acc.bare.req) end
  local shown = empty_token(top.ref, top.req)
  local function place(w, value_field, version_field)
    if w == nil then return end
    local holder = shown
    if w.ref ~= top.ref or w.req ~= top.req then
      shown.superseded = empty_token(w.ref, w.req)
      holder = shown.superseded
    end
    holder[value_field] = w.value
    holder[version_field] = w.version
  end
  place(s, 'status', 'status_version')
  place(d, 'decision', 'decision_version')
  return shown
end
-- Merges `other` into `base` (a join); returns the token and whether it differs from `base`
-- (some register's write, or the bare token shown, came from `other`).
local function merge_tokens(base, other)
  local acc = {}
  collect(acc, base, 'base')
  collect(acc, other, 'other')
  local changed = (acc.status ~= nil and acc.status.side == 'other')
    or (acc.decision ~= nil and acc.decision.side == 'other')
    or (acc.status == nil and acc.decision == nil and acc.bare.side == 'other')
  return project(acc), changed
end
"#;

/// The Lua twin of `domain::follow_token`: an ENROLLED record with a DEACTIVATED token is
/// REMOVED (reason TOKEN_DEACTIVATED, at the status write's event time), and one REMOVED for that
/// reason alone is ENROLLED again when its token no longer shows DEACTIVATED. Needs `present`
/// (`TOKEN_MERGE`).
const FOLLOW_TOKEN: &str = r#"
local function follow_token(record)
  local removed_by_token = record.state == 'REMOVED' and present(record.removal)
    and record.removal.reason == 'TOKEN_DEACTIVATED'
  if record.state ~= 'ENROLLED' and not removed_by_token then return end
  -- The card's latest status write: the token shown, or the one kept aside.
  local t = record.token
  local latest = nil
  if present(t) then
    if present(t.status_version) then
      latest = t
    elseif present(t.superseded) and present(t.superseded.status_version) then
      latest = t.superseded
    end
  end
  if not latest then return end
  if latest.status == 'DEACTIVATED' then
    record.state = 'REMOVED'
    record.removal = {reason = 'TOKEN_DEACTIVATED', time_ms = latest.status_version.at_ms}
  else
    record.state = 'ENROLLED'
    record.removal = nil
  end
end
"#;

/// The Lua twin of `EnrollmentRecord::stamped` and `same_content`: the store's clock sets the
/// record's times and revision; a write that changes nothing else is not made.
const STAMP: &str = r#"
local function stamp(record, existing, now)
  local previous = -1
  if existing then
    record.create_time_ms = existing.create_time_ms
    previous = 0
    if present(existing.revision) then previous = existing.revision end
  else
    record.create_time_ms = now
  end
  record.update_time_ms = now
  local revision = previous + 1
  if now > revision then revision = now end
  record.revision = revision
end
local function same(a, b)
  if type(a) ~= 'table' or type(b) ~= 'table' then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k, _ in pairs(b) do if a[k] == nil then return false end end
  return true
end
local STAMPED = {create_time_ms = true, update_time_ms = true, revision = true}
local function same_content(a, b)
  for k, v in pairs(a) do
    if not STAMPED[k] and not same(v, b[k]) then return false end
  end
  for k, _ in pairs(b) do
    if not STAMPED[k] and a[k] == nil then return false end
  end
  return true
end
"#;

/// KEYS: per notification, its card's record and its dedup marker. ARGV: record TTL (ms), dedup
/// TTL (ms), the reply wanted (`record`: each applied record's JSON too; `outcome`: the outcome
/// only), then per notification: the event's token JSON, card id, change channel, content hash.
///
/// Applies the notifications in the order given, each as `domain::merge` does: the marker
/// keeps the hash, so the same id with other content is a `conflict`, not a duplicate; a
/// notification for a card with no record, or a NOT_ENROLLED one, makes it TOKENIZED_ELSEWHERE;
/// an ENROLLED record follows its token (`follow_token`).
/// Redis' clock is read once per call. One reply per notification: {'duplicate'} |
/// {'conflict'} | {'stale'} | {'applied'} (`{'applied', json}` with `record`) | {'error',
/// message} when that notification could not be applied (its stored record is unreadable, or a
/// number would be rounded: `C2P_REFUSED ...`); nothing of it was written, and the others are
/// applied all the same. All the keys of one call are on one Cluster slot (the caller groups).
pub fn apply_notification() -> String {
    format!(
        "{ENCODE}{REDIS_NOW}{TOKEN_MERGE}{FOLLOW_TOKEN}{STAMP}{}",
        r#"
local function apply(record_key, marker_key, token, card, channel, hash, now, with_record)
  local seen = redis.call('GET', marker_key)
  if seen then
    if seen == hash then return {'duplicate'} end
    return {'conflict'}
  end
  local incoming = cjson.decode(token)
  local raw = redis.call('GET', record_key)
  local record, existing
  if not raw then
    record = {
      card_contract_id = tonumber(card), program = '', state = 'TOKENIZED_ELSEWHERE',
      src_digital_card_id = cjson.null, src_consumer_id = cjson.null, src_correlation_id = cjson.null,
      masked_card = cjson.null, token = incoming, failure = cjson.null
    }
  else
    record = cjson.decode(raw)
    -- A token of an earlier enrollment of the card changes nothing (`EnrollmentRecord::retired`).
    if present(record.retired_tokens) then
      for _, r in ipairs(record.retired_tokens) do
        if r == incoming.token_unique_reference then
          redis.call('SET', marker_key, hash, 'PX', ARGV[2])
          return {'stale'}
        end
      end
    end
    -- What `stamp` reads of the record as it was.
    existing = {create_time_ms = record.create_time_ms, revision = record.revision}
    local token_changed = true
    if present(record.token) then
      record.token, token_changed = merge_tokens(record.token, incoming)
    else
      record.token = incoming
    end
    if not token_changed then
      redis.call('SET', marker_key, hash, 'PX', ARGV[2])
      return {'stale'}
    end
    if record.state == 'NOT_ENROLLED' then record.state = 'TOKENIZED_ELSEWHERE' end
    follow_token(record)
  end
  stamp(record, existing, now)
  local out = encode(record)
  redis.call('SET', record_key, out, 'PX', ARGV[1])
  redis.call('SET', marker_key, hash, 'PX', ARGV[2])
  redis.call('PUBLISH', channel, out)
  if with_record then return {'applied', out} end
  return {'applied'}
end
local now = redis_now()
local with_record = ARGV[3] == 'record'
local replies = {}
for i = 1, #KEYS / 2 do
  local a = 3 + (i - 1) * 4
  local ok, reply = pcall(apply, KEYS[2 * i - 1], KEYS[2 * i], ARGV[a + 1], ARGV[a + 2],
    ARGV[a + 3], ARGV[a + 4], now, with_record)
  if not ok then
    if type(reply) == 'table' and reply.err then reply = reply.err end
    reply = {'error', tostring(reply)}
  end
  replies[i] = reply
end
return replies
"#
    )
}

/// The compare-and-set write of notifications merged by the service (`merge_plan.rs`).
/// KEYS: per notification, its card's record and its dedup marker. ARGV: record TTL (ms), dedup
/// TTL (ms), then per notification: the record it was merged onto ("" for none), the record to
/// write ("" when it changes nothing), content hash, change channel.
///
/// Per notification, in order, as `apply_notification` decides it: a marker already there is a
/// `duplicate` (same hash) or a `conflict`; a stored record that is no longer the one it was
/// merged onto is `retry` (nothing written: the caller applies it with `apply_notification`);
/// else the marker is set and the record written and published (`applied`), or not (`stale`).
/// No JSON is read or made here: that is what makes it cheap. A command that fails (a key of
/// another type) is `retry` as well, for `apply_notification` to settle.
pub const WRITE_MERGED: &str = r#"
local function write(record_key, marker_key, expected, new, hash, channel)
  local seen = redis.call('GET', marker_key)
  if seen then
    if seen == hash then return 'duplicate' end
    return 'conflict'
  end
  local raw = redis.call('GET', record_key)
  if (raw or '') ~= expected then return 'retry' end
  -- The record before its marker, as `apply_notification` writes them: a write that fails
  -- leaves no marker behind to answer a later try `duplicate`.
  if new ~= '' then
    redis.call('SET', record_key, new, 'PX', ARGV[1])
    redis.call('PUBLISH', channel, new)
  end
  redis.call('SET', marker_key, hash, 'PX', ARGV[2])
  if new == '' then return 'stale' end
  return 'applied'
end
local replies = {}
for i = 1, #KEYS / 2 do
  local a = 2 + (i - 1) * 4
  local ok, reply = pcall(write, KEYS[2 * i - 1], KEYS[2 * i], ARGV[a + 1], ARGV[a + 2],
    ARGV[a + 3], ARGV[a + 4])
  if not ok then reply = 'retry' end
  replies[i] = reply
end
return replies
"#;

/// KEYS: record, card lock. ARGV: record JSON, TTL (ms), change channel, mode (`merge` |
/// `if_absent`), fence (the lock owner the writer must be, or empty for none), token
/// (`keep_token`: merge the stored token, as `EnrollmentRecord::with_token_of`; `fresh`: the
/// record's own, for a new enrollment of a REMOVED card).
/// Returns the stored JSON, or nil when fenced out (the lock is someone else's). A write that
/// changes nothing but times is not made (the record's TTL is renewed).
pub fn put_enrollment() -> String {
    format!(
        "{ENCODE}{REDIS_NOW}{TOKEN_MERGE}{FOLLOW_TOKEN}{STAMP}local RETIRED_TOKENS = {}\n{}",
        crate::domain::RETIRED_TOKENS,
        r#"
-- The last RETIRED_TOKENS of `list` (the most recent), in order.
local function most_recent(list)
  local over = #list - RETIRED_TOKENS
  if over <= 0 then return list end
  local kept = {}
  for i = over + 1, #list do kept[#kept + 1] = list[i] end
  return kept
end
-- `retire_correlation` in `domain/enrollment.rs`: `kept` with `existing`'s srcCorrelationId
-- added when `record` (written over it) has another, the most recent RETIRED_TOKENS kept.
local function retire_correlation(record, kept, existing)
  local ids, known = {}, {}
  if present(kept) then
    for _, id in ipairs(kept) do
      ids[#ids + 1] = id
      known[id] = true
    end
  end
  local old, new = existing.src_correlation_id, record.src_correlation_id
  -- string.lower maps ASCII only (Redis sets LC_COLLATE, not LC_CTYPE), as eq_ignore_ascii_case.
  if present(old) and old ~= '' and present(new) and new ~= ''
    and string.lower(old) ~= string.lower(new) and not known[old] then
    ids[#ids + 1] = old
  end
  ids = most_recent(ids)
  if #ids > 0 then record.retired_correlations = ids else record.retired_correlations = nil end
end
if ARGV[5] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[5] then return false end
local raw = redis.call('GET', KEYS[1])
if raw and ARGV[4] == 'if_absent' then return raw end
local record = cjson.decode(ARGV[1])
local existing
if raw then
  existing = cjson.decode(raw)
  if ARGV[6] == 'fresh' then
    -- `EnrollmentRecord::retiring_tokens_of`: the dropped token's references stay retired.
    local retired, seen = {}, {}
    local function keep(reference)
      if reference and reference ~= '' and not seen[reference] then
        seen[reference] = true
        retired[#retired + 1] = reference
      end
    end
    if present(existing.retired_tokens) then
      for _, r in ipairs(existing.retired_tokens) do keep(r) end
    end
    if present(existing.token) then
      keep(existing.token.token_unique_reference)
      if present(existing.token.superseded) then
        keep(existing.token.superseded.token_unique_reference)
      end
    end
    retired = most_recent(retired)
    if #retired > 0 then record.retired_tokens = retired end
    -- And its srcCorrelationId.
    retire_correlation(record, existing.retired_correlations, existing)
  else
    -- `EnrollmentRecord::with_token_of`.
    if present(existing.retired_tokens) then record.retired_tokens = existing.retired_tokens end
    local kept = record.retired_correlations
    if present(existing.retired_correlations) then kept = existing.retired_correlations end
    retire_correlation(record, kept, existing)
    if present(existing.token) then
      if present(record.token) then
        -- A writer that read the record with a token: the state follows the merged one.
        record.token = merge_tokens(existing.token, record.token)
        follow_token(record)
      else
        record.token = existing.token
      end
    end
  end
  if same_content(record, existing) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return raw
  end
end
stamp(record, existing, redis_now())
local out = encode(record)
redis.call('SET', KEYS[1], out, 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], out)
return out
"#
    )
}

/// KEYS: idempotency record. ARGV: proposal JSON, fingerprint, lease (ms), TTL (ms).
/// Returns {'new', json} | {'resume', json} | {'replay', json} | {'in_flight', ms} | {'reused'}.
pub fn idempotency_begin() -> String {
    format!(
        "{ENCODE}{REDIS_NOW}{}",
        r#"
local now = redis_now()
local lease = tonumber(ARGV[3])
local raw = redis.call('GET', KEYS[1])
if not raw then
  local proposal = cjson.decode(ARGV[1])
  proposal.lease_until_ms = now + lease
  local out = encode(proposal)
  redis.call('SET', KEYS[1], out, 'PX', ARGV[4])
  return {'new', out}
end
local r = cjson.decode(raw)
if r.fingerprint ~= ARGV[2] then return {'reused'} end
if r.outcome ~= nil and r.outcome ~= cjson.null then return {'replay', raw} end
if r.lease_until_ms > now then return {'in_flight', tostring(r.lease_until_ms - now)} end
local proposal = cjson.decode(ARGV[1])
r.owner = proposal.owner
r.lease_until_ms = now + lease
local out = encode(r)
redis.call('SET', KEYS[1], out, 'PX', ARGV[4])
return {'resume', out}
"#
    )
}

/// Redis' own clock in ms: every replica's lease is measured on it (one clock, not theirs).
const REDIS_NOW: &str = r#"
local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

/// `take_lock()`: takes or renews the lock KEYS[1] for the owner ARGV[1] for ARGV[2] ms; true
/// when the owner holds it.
const TAKE_LOCK: &str = r#"
local function take_lock()
  local holder = redis.call('GET', KEYS[1])
  if holder and holder ~= ARGV[1] then return false end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return true
end
"#;

/// KEYS: card lock. ARGV: owner, TTL (ms). Takes or renews the lock; 1 when `owner` holds it.
pub fn lock_card() -> String {
    format!(
        "{TAKE_LOCK}{}",
        r#"
if take_lock() then return 1 end
return 0
"#
    )
}

/// KEYS: card lock, card record, the card's opt-out. ARGV: owner, TTL (ms). [`lock_card`], then
/// (only when `owner` holds the lock) both values read under it: `{0}` when another owner holds
/// it, else `{1, record, opt-out}`, each the string, nil when absent, or 0 when the key holds
/// another Redis type (a GET would fail the script after the lock was set; the caller reads the
/// record again the usual way, which sets it aside).
pub fn lock_and_read() -> String {
    format!(
        "{TAKE_LOCK}{}",
        r#"
if not take_lock() then return {0} end
local function read(key)
  local kind = redis.call('TYPE', key).ok
  if kind == 'string' then return redis.call('GET', key) end
  if kind == 'none' then return false end
  return 0
end
return {1, read(KEYS[2]), read(KEYS[3])}
"#
    )
}

/// KEYS: a sorted-set index. ARGV: card, a time (ms). Removes the card only while its score is
/// below the time (still due); 1 then.
pub const UNTRACK_DUE: &str = r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) < tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

/// KEYS: card lock. ARGV: owner, TTL (ms). Extends the lock only if `owner` holds it; 1 then.
pub const RENEW_CARD: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// KEYS: record, its quarantine name. ARGV: the value read (empty: it was not a string).
/// Renames the record aside only if it still is what was read; 1 then.
pub const QUARANTINE: &str = r#"
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return 0 end
if kind == 'string' then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
elseif ARGV[1] ~= '' then
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
"#;

/// KEYS: an opt-out. ARGV: the text expected there (empty: none), the new text (empty: delete).
/// Writes only while the key holds what was read (another OptOut or WithdrawOptOut of the
/// cardholder may have changed it since); 1 then, else 0.
pub const SWAP_OPT_OUT: &str = r#"
local kept = redis.call('GET', KEYS[1]) or ''
if kept ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
"#;

/// KEYS: card lock. ARGV: owner. Deletes the lock only if `owner` holds it; 1 then, else 0.
pub const UNLOCK_CARD: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"#;

/// KEYS: idempotency record. ARGV: owner, record JSON, TTL (ms), lease (ms; 0 = released).
/// Writes only for the owner (a fence against a stalled caller whose lease was taken over), the
/// lease measured on Redis' clock. Returns 1 or 0.
pub fn idempotency_update() -> String {
    format!(
        "{ENCODE}{REDIS_NOW}{}",
        r#"
local raw = redis.call('GET', KEYS[1])
if raw then
  local r = cjson.decode(raw)
  if r.owner ~= ARGV[1] then return 0 end
end
local record = cjson.decode(ARGV[2])
local lease = tonumber(ARGV[4])
if lease > 0 then record.lease_until_ms = redis_now() + lease else record.lease_until_ms = 0 end
redis.call('SET', KEYS[1], encode(record), 'PX', ARGV[3])
return 1
"#
    )
}
