-- Operations under way were found on `operations_by_status (status,
-- lease_until)`. Every write of an operation's progress moves its lease, so
-- none could be a heap-only (HOT) update: each wrote a new entry in all
-- four of the table's indexes, three times a creation. The index is now
-- partial and without the lease: the operations under way (a few per
-- creation in flight, whatever the history), in the order the reconciler
-- and a replica's restart read them. Progress and lease writes change no
-- indexed column, and the table keeps a fifth of each page free so that
-- they find room beside the row they replace.
DROP INDEX operations_by_status;
CREATE INDEX operations_in_flight ON operations (created_at, id)
    WHERE status IN ('pending', 'running');
ALTER TABLE operations SET (fillfactor = 80);
