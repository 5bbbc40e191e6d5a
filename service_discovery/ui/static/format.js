// Numbers, durations and the server's clock.

export const count = (n, one, many = `${one}s`) =>
  `${n.toLocaleString('en')} ${n === 1 ? one : many}`;

/** 42 -> "42s", 250 -> "4m 10s", 7500 -> "2h 5m", 604800 -> "7d 0h". */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

// Leases expire at the server's unix time. The Date header of each answer tells how far this
// browser's clock is off; it has a resolution of one second, so smaller offsets are noise.
let offset = 0;

export function serverDate(header) {
  const at = Date.parse(header ?? '');
  if (Number.isNaN(at)) return;
  const off = (at - Date.now()) / 1000;
  offset = Math.abs(off) > 2 ? off : 0;
}

export const serverNow = () => Date.now() / 1000 + offset;

/** Seconds left on a lease (<= 0: lapsed). */
export const secondsLeft = (expiresAt) => expiresAt - serverNow();

/** "in 12s", or "lapsed" once the time has come (until the registry removes it). */
export function expiresIn(expiresAt) {
  const left = secondsLeft(expiresAt);
  return left > 0 ? `in ${duration(Math.ceil(left))}` : 'lapsed';
}
