-- Cheap heartbeats. A renewal rewrites only endpoints.expires_at; with no index on that column
-- it is a HOT update: no index entry is written, and page pruning reclaims the old row version
-- without VACUUM. The renewals reach the other replicas in the NOTIFY payloads themselves, so
-- the lease batch column, its index and its sequence are not needed either. The reaper finds
-- lapsed leases by scanning the leased rows, which its sweep counts in full anyway.
-- depends: 0001.registry

DROP INDEX endpoints_expires_at;
DROP INDEX endpoints_lease_batch;
ALTER TABLE endpoints DROP COLUMN lease_batch;
DROP SEQUENCE lease_batch_seq;
-- Room on each page for the new version of a renewed row, so HOT updates stay on the page.
ALTER TABLE endpoints SET (fillfactor = 80);
