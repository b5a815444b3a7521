-- 0006: the leader's term is a lease. The leader renews lease_until while it acts; a
-- standby that finds it run out ends the leader's session (pid: the backend holding the
-- leader's advisory lock), so a leader stopped without dying (SIGSTOP, a hung host whose
-- kernel still answers) cannot keep the lock and stop moves, schedules and limits.
ALTER TABLE catalog.leader ADD COLUMN lease_until timestamptz, ADD COLUMN pid integer;
