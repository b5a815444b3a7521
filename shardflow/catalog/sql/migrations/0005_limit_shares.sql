-- 0005: the share of each cluster-wide limit given to each shard. A shard that cannot be
-- reached (down, partitioned) may still run up to the share it was last given; the
-- leading coordinator counts it as taken, so the limit is never given out twice.
CREATE TABLE catalog.limit_shares (
    name text NOT NULL,
    shard text NOT NULL,
    share integer NOT NULL CONSTRAINT limit_shares_share_check CHECK (share >= 0),
    PRIMARY KEY (name, shard)
);
