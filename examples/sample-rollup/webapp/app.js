console.log("demo web app 1.1.0");
