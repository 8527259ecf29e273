-- GET /v1/jobs lists jobs newest first, all of them or one function's.
CREATE INDEX jobs_created ON jobs (created_at DESC);
CREATE INDEX jobs_function_created ON jobs (function, created_at DESC);
