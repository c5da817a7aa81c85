<?php
// Prepended to every PHP request (php-cgi -d auto_prepend_file=...) when
// $RS_PHP_TIMES names a file (roundcube/deploy.py; experiments/
// request_times.py reads it): one line per request, "URI START END", the
// request's start (REQUEST_TIME_FLOAT) and the end of its last shutdown
// function, in seconds of the wall clock the client's CSV uses.  What is
// left after it (destructors, the database's close, the FastCGI end)
// counts as after the application.
if (($rs_php_times = getenv('RS_PHP_TIMES')) !== false && $rs_php_times !== '') {
    register_shutdown_function(function () use ($rs_php_times) {
        // Registered from a shutdown function: runs after every other one.
        register_shutdown_function(function () use ($rs_php_times) {
            file_put_contents($rs_php_times, sprintf("%s %.6f %.6f\n", $_SERVER['REQUEST_URI'] ?? '-',
                $_SERVER['REQUEST_TIME_FLOAT'], microtime(true)), FILE_APPEND | LOCK_EX);
        });
    });
}
unset($rs_php_times);
