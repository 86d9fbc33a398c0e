"use strict";
// The console is written in console.js; this file is replaced by it.
